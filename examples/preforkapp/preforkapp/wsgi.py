"""A tiny WSGI app: each response names the worker process that served it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"worker": os.getpid(), "arbiter": os.getppid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
