"""The keyword options of :func:`app_agent.start`, typed once for the lazy public wrapper."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypedDict


class StartOptions(TypedDict, total=False):
    """Keyword options of ``app_agent.start``; see :func:`app_agent._agent.start`."""

    app: str | None
    allowed_uids: Iterable[int] | None
    on_stop: Callable[[], None] | None
    cookie: str | bytes | None
    cookie_file: str | os.PathLike[str] | None
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    locks: str | None
    ready: bool | None
