"""gunicorn settings for the API container (`gunicorn -c deploy/gunicorn.conf.py 'gradcheck_service.service.app:create_app()'`).

Threads serve slow clients (uploads, polling) without a process each; each process opens its own database pool
after the fork (the app is not preloaded).
"""

import multiprocessing
import os

from gradcheck_service.service.gunicorn_app import install_json_errors

bind = os.environ.get("GRADCHECK_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GRADCHECK_HTTP_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 9)))
worker_class = "gthread"
threads = int(os.environ.get("GRADCHECK_HTTP_THREADS", 4))
timeout = 60  # seconds a request may take; checks run in workers, never in a request
graceful_timeout = 20
keepalive = 5
preload_app = False
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GRADCHECK_LOG_LEVEL", "info")
forwarded_allow_ips = os.environ.get("GRADCHECK_FORWARDED_ALLOW_IPS", "127.0.0.1")
on_starting = install_json_errors  # gunicorn's own refusals (414, 431, 400, ...) answered as the API's JSON errors
