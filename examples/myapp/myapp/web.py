"""The HTTP side: a JSON API over the notes table, on the standard library's server."""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa

from myapp import db

_server: ThreadingHTTPServer | None = None


class Handler(BaseHTTPRequestHandler):
    server_version = "myapp"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif self.path == "/notes":
            self._list_notes()
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/notes":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
            row = {"title": str(data["title"]), "body": str(data.get("body", ""))}
        except (ValueError, KeyError, TypeError):
            self._send(HTTPStatus.BAD_REQUEST, {"error": 'expected JSON {"title": ...}'})
            return
        row["tags"] = str(data.get("tags", ""))
        try:
            with db.engine().begin() as connection:
                new_id = connection.execute(db.notes.insert().values(**row)).inserted_primary_key
        except sa.exc.OperationalError as exc:
            self._not_migrated(exc)
            return
        self._send(HTTPStatus.CREATED, {"id": new_id[0] if new_id else None, **row})

    def _list_notes(self) -> None:
        try:
            with db.engine().connect() as connection:
                rows = connection.execute(sa.select(db.notes).order_by(db.notes.c.id)).mappings()
                notes = [{k: _plain(v) for k, v in row.items()} for row in rows]
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            self._not_migrated(exc)
            return
        self._send(HTTPStatus.OK, {"notes": notes})

    def _not_migrated(self, exc: Exception) -> None:
        self._send(
            HTTPStatus.SERVICE_UNAVAILABLE,
            {
                "error": "the database schema is not ready: run `rpcctl rpc myapp.tasks.migrate`",
                "detail": str(exc.__cause__ or exc).splitlines()[0],
            },
        )

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the app logs through structlog, not the server's stderr lines."""


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def make_server() -> ThreadingHTTPServer:
    """Bind MYAPP_HTTP (host:port, default 127.0.0.1:8080; port 0 picks a free one)."""
    global _server
    host, _, port = os.environ.get("MYAPP_HTTP", "127.0.0.1:8080").rpartition(":")
    _server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    _server.daemon_threads = True
    return _server


def url() -> str | None:
    if _server is None:
        return None
    host, port = _server.server_address[:2]
    return f"http://{host!s}:{port}"
