"""Celery wiring for gradcheck-service workers: the Celery app (``workers.celery_app``) and its tasks."""
