# gunicorn -c gunicorn.conf.py preforkapp.wsgi:app
import os

from preforkapp.gunicorn_hooks import on_exit, when_ready  # noqa: F401

bind = os.environ.get("PREFORKAPP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PREFORKAPP_WORKERS", "2"))
