"""Settings of the example project: SQLite by default, PostgreSQL when DATABASE_URL says so.

The rpcctl part is one line in INSTALLED_APPS; the agent's address comes from RPCCTL_NODE
in the environment (``rpcctl start`` sets it from rpcctl.toml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def database(url: str) -> dict[str, Any]:
    """A DATABASES entry for ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``postgresql://user:password@host:port/name``."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:])}
    if scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path[1:]),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    msg = f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite:// or postgresql://)"
    raise ValueError(msg)


DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'var' / 'djangoapp.db'}"
if not os.environ.get("DATABASE_URL"):
    (BASE_DIR / "var").mkdir(exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,test").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "polls",
    "app_agent.contrib.django",  # the rpcctl agent, in the serving process
]
ROOT_URLCONF = "djangoapp.urls"
WSGI_APPLICATION = "djangoapp.wsgi.application"
DATABASES = {"default": database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# Replicas sharing a PostgreSQL database also share the migrations lock, as advisory locks
# in that database: one migrates, the others wait or find it busy (exit 7).
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    RPCCTL_AGENT_OPTIONS = {"locks": os.environ.get("RPCCTL_LOCKS") or DATABASE_URL}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
