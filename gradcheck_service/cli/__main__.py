"""``python -m gradcheck_service.cli``: the ``gradcheck-service`` command without its console script (``serve``
starts its embedded worker this way)."""

from . import main

main()
