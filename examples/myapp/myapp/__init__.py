"""myapp: a small notes service over HTTP, with rpcctl's agent embedded.

Its database schema is managed by Alembic; the release tasks in :mod:`myapp.tasks` run the
migrations inside the live process (``rpcctl rpc myapp.tasks.migrate``).
"""

__version__ = "1.0.0"
