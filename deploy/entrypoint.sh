#!/bin/sh
# Container entry: `api` (migrate, then gunicorn), `worker-cpu`, `worker-gpu`, `beat`, or any command.
# The migration is retried while PostgreSQL is still starting; several API containers may race to it, and
# Alembic's version table makes the losers find the schema already current.
set -eu

migrate() {
    tries=0
    until gradcheck-service db upgrade; do
        tries=$((tries + 1))
        if [ "$tries" -ge "${GRADCHECK_MIGRATE_TRIES:-30}" ]; then
            echo "entrypoint: database still unavailable after $tries tries" >&2
            exit 1
        fi
        echo "entrypoint: database not ready, retrying in 2 s ($tries)" >&2
        sleep 2
    done
}

case "${1:-api}" in
    api)
        migrate
        exec gunicorn -c /app/deploy/gunicorn.conf.py "gradcheck_service.app:create_app()"
        ;;
    worker-cpu)
        exec gradcheck-service worker --queues cpu --concurrency "${GRADCHECK_WORKER_CONCURRENCY:-2}"
        ;;
    worker-gpu)
        # One job per GPU: run one such container per GPU, each given its device with CUDA_VISIBLE_DEVICES.
        exec gradcheck-service worker --queues gpu
        ;;
    beat)
        # The stale-run reaper's schedule: run exactly one per deployment.
        exec celery -A workers.celery_app beat --schedule /var/lib/gradcheck/celerybeat-schedule --loglevel INFO
        ;;
    *)
        exec "$@"
        ;;
esac
