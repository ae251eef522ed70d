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

# Job-wide sandbox limits: the worker creates one cgroup per check (memory, processes, CPU of all its processes
# together), which needs root in the container and a writable cgroup filesystem; Docker mounts it read-only.
# Remounting needs CAP_SYS_ADMIN (deploy/docker-compose.yml adds it to workers). Without it the worker falls back
# to a watchdog and its start-up log (and `gradcheck-service sandbox-check`) says so.
cgroups_writable() {
    if [ "$(id -u)" = 0 ] && [ -d /sys/fs/cgroup ] && [ ! -w /sys/fs/cgroup ]; then
        mount -o remount,rw /sys/fs/cgroup 2>/dev/null \
            || echo "entrypoint: /sys/fs/cgroup stays read-only: job-wide limits use the watchdog" >&2
    fi
}

case "${1:-api}" in
    api)
        migrate
        exec gunicorn -c /app/deploy/gunicorn.conf.py "gradcheck_service.service.app:create_app()"
        ;;
    worker-cpu)
        cgroups_writable
        exec gradcheck-service worker --queues cpu --concurrency "${GRADCHECK_WORKER_CONCURRENCY:-2}"
        ;;
    worker-gpu)
        # One job per GPU: run one such container per GPU, each given its device with CUDA_VISIBLE_DEVICES.
        cgroups_writable
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
