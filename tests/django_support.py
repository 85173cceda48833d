"""Helpers shared by test_django.py, test_django_gunicorn.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    DEADLINE,
    ROOT,
    AppProcess,
    _Drain,
    run_rpcctl,
)

DJANGOAPP = ROOT / "examples" / "djangoapp"


ALL_MIGRATIONS = [
    "contenttypes.0001_initial",
    "contenttypes.0002_remove_content_type_name",
    "polls.0001_initial",
    "polls.0002_first_question",
]


QUESTION = "Does the live site migrate itself?"


# A test-only app whose first migration runs before all the others, says so, and then waits
# for a file: a migration that is certainly still running while the test looks.
GATE_MIGRATION = """
import os, sys, time
from django.db import migrations

def wait(apps, schema_editor):
    print("gate: waiting", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.environ["DJANGO_TEST_GATE"]):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never opened the gate")
        time.sleep(0.01)
    print("gate: open", flush=True)

class Migration(migrations.Migration):
    run_before = [("contenttypes", "0001_initial"), ("polls", "0001_initial")]
    operations = [migrations.RunPython(wait, migrations.RunPython.noop)]
"""


def write_settings(directory: Path, name: str, extra: str) -> str:
    """A settings module in *directory*: the example's settings plus *extra*."""
    (directory / f"{name}.py").write_text(f"from djangoapp.settings import *  # noqa\n{extra}\n")
    return name


def add_gate_app(directory: Path) -> str:
    migrations = directory / "gate" / "migrations"
    migrations.mkdir(parents=True)
    (directory / "gate" / "__init__.py").write_text("")
    (migrations / "__init__.py").write_text("")
    (migrations / "0001_gate.py").write_text(GATE_MIGRATION)
    return write_settings(directory, "gatesettings", 'INSTALLED_APPS = ["gate", *INSTALLED_APPS]')


def django_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": f"{tmp}{os.pathsep}{DJANGOAPP}",
        "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3",
        **extra,
    }


def start_gunicorn(
    tmp: Path, node: str, workers: int = 2, preload: bool = True, **env: str
) -> tuple[AppProcess, str]:
    http = f"{tmp}/http.sock"
    app = AppProcess(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "djangoapp.wsgi"],
        node=node,
        env=django_env(
            tmp,
            DJANGOAPP_BIND=f"unix:{http}",
            DJANGOAPP_WORKERS=str(workers),
            DJANGOAPP_PRELOAD="1" if preload else "0",
            **env,
        ),
        cwd=DJANGOAPP,
        ready_line=None,
    )
    waited = run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE))
    if waited.returncode != 0:
        pytest.fail(f"gunicorn's agent never answered: {waited.stderr}\n{app.stderr()}")
    return app, http


def http_get(path: str, url: str) -> tuple[int, dict[str, Any]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(path)
        sock.sendall(f"GET {url} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def rpc_result(node: str, *args: str) -> Any:
    """The result of `rpcctl rpc --json ...` (the envelope is its last line)."""
    result = run_rpcctl("-n", node, "rpc", "--json", *args)
    envelope = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert envelope["ok"], envelope
    return envelope["result"]


def info(node: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(run_rpcctl("-n", node, "info", "--json").stdout)["result"]
    return answer


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def open_files(pid: int, needle: str) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while we looked
            continue
        if needle in target:
            found.append(target)
    return found


_DRAINS: weakref.WeakKeyDictionary[Any, _Drain] = weakref.WeakKeyDictionary()


def read_until(proc: subprocess.Popen[str], wanted: str, stream: str = "stdout") -> list[str]:
    """Lines of *proc*'s *stream* up to the one that contains *wanted* (read on a thread:
    a select() on the descriptor cannot see lines a text buffer has already taken)."""
    pipe = getattr(proc, stream)
    assert pipe is not None
    drain = _DRAINS.get(pipe)
    if drain is None:
        drain = _DRAINS[pipe] = _Drain(pipe)
    lines: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while (line := drain.next_line(deadline)) is not None:
        lines.append(line)
        if wanted in line:
            return lines
    proc.kill()
    pytest.fail(f"never saw {wanted!r}; got {lines}")
