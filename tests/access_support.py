"""Helpers shared by test_access.py, test_access_tls_unix.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from conftest import SAMPLEAPP, AppProcess

ACCESS = """\
[identity.deploy]
cookie_file = "deploy.cookie"
allow = ["*"]

[identity.oncall]
cookie_file = "oncall.cookie"
allow = ["read", "sampleapp.echo", "sampleapp.whoa*", "sampleapp.nothing_*"]

[identity.probe]
cookie_file = "probe.cookie"
allow = []
"""


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def access_files(directory: Path, access: str = ACCESS) -> Path:
    """An access file in *directory*, with a cookie file for each cookie identity."""
    for name in ("deploy", "oncall", "probe", "ops"):
        write_secret(directory / f"{name}.cookie", f"{name}-cookie-0123456789abcdef\n")
    return write_secret(directory / "access.toml", textwrap.dedent(access))


def agent_log(app: AppProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]


def start_app(node: str, env: dict[str, str]) -> AppProcess:
    """sampleapp at *node*; its real node (the bound port for :0) from its READY line."""
    app = AppProcess(SAMPLEAPP, node=node, env=env)
    app.node = app.stdout_lines[-1].split()[1]
    return app
