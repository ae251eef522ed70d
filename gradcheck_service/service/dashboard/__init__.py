"""The web dashboard: runs, reports and history as pages, served by the same Flask app as the API.

Pages need a session signed in with a project token (see :mod:`.auth`) and show only that project's runs.
Charts are drawn by Chart.js, shipped under ``static/vendor/`` with its licence, so the dashboard works offline.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")

from . import formatting  # noqa: E402

formatting.register(bp)

from . import auth, errors, views  # noqa: E402,F401  (register routes and handlers on bp)
