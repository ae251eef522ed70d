"""The service house: the Flask API and dashboard, the store, the Celery jobs and the sandbox they run checks in.

It builds on the library (``checks``, ``definitions``, ``report``, ``options``) and the library never imports it
(``tests/unit/test_import_contract.py`` and the import-linter contracts in ``pyproject.toml`` hold that line).
``workers/`` at the repository top holds only the Celery app and task wiring.
"""
