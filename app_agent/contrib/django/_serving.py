"""Whether this process is the one that serves the site, judged from its command line.

Django runs ``AppConfig.ready()`` in every process that loads it: the servers, but also
``manage.py migrate``, ``shell``, test runners and task queues. The agent belongs only in
the first kind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

SERVERS = frozenset(
    {"gunicorn", "uvicorn", "daphne", "hypercorn", "granian", "waitress-serve", "uwsgi"}
)
"""Programs that serve a Django project, by the name in ``sys.argv[0]``."""

MANAGEMENT = frozenset({"manage.py", "django-admin", "django-admin.py", "django"})
"""Programs that run a management command named by ``sys.argv[1]``."""


def program(argv: Sequence[str]) -> str:
    """The program's name: ``gunicorn`` for ``/venv/bin/gunicorn`` and ``python -m gunicorn``."""
    path = argv[0] if argv else ""
    if os.path.basename(path) == "__main__.py":
        path = os.path.dirname(path)
    return os.path.basename(path)


def is_serving(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """True in a server process, and in the process of ``runserver`` that serves requests:
    the autoreloader's child (``RUN_MAIN=true``), or the only one with ``--noreload``."""
    name = program(argv)
    if name in SERVERS:
        return True
    if name in MANAGEMENT and len(argv) > 1 and argv[1] == "runserver":
        # Django's own test for the reloader (django.core.management.ManagementUtility).
        return environ.get("RUN_MAIN") == "true" or "--noreload" in argv[2:]
    return False
