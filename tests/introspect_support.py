"""Helpers shared by test_introspect.py, test_health.py, test_profile.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import rpcctl
from conftest import (
    APPS,
    AppProcess,
    wait_until,
)

INTROAPP = [sys.executable, str(APPS / "introapp.py")]


def start_introapp(directory: Path, name: str = "agent", **env: str) -> AppProcess:
    return AppProcess(INTROAPP, node=f"unix:{directory}/{name}.sock", env=env)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)["result"]


def detach(app: AppProcess, expression: str) -> str:
    return ok(app.rpcctl("rpc", "--detach", expression)).stdout.strip()


def stop_job(app: AppProcess, job: str) -> None:
    app.rpcctl("cancel", job)
    app.rpcctl("wait", job)


def job_printed(app: AppProcess, job: str, text: str) -> None:
    wait_until(lambda: text in app.rpcctl("logs", job).stdout, what=f"job {job} to print {text}")


def functions(frames: list[dict[str, Any]]) -> list[str]:
    return [f["function"] for f in frames]


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def wait_for_worker(app: AppProcess, job: str) -> None:
    """Until the job's worker is inside hot_loop (polled through the client API: cheaper
    than a process per poll on a loaded machine)."""
    with rpcctl.connect(app.node) as conn:

        def in_hot_loop() -> bool:
            return any(
                (t["busy"] or {}).get("job") == job and "hot_loop" in functions(t["frames"])
                for t in conn.stack()["threads"]
            )

        wait_until(in_hot_loop, what="the spinning job in stack")
