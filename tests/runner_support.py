"""Helpers shared by test_runner.py, test_runner_stop.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from conftest import APPS, DEADLINE, rpcctl_executable, run_rpcctl, wait_until

# A hook body that records which hook ran and the app pid it saw.
RECORD = (
    'echo "$RPCCTL_HOOK $(basename "$0") app_pid=${RPCCTL_APP_PID:-none}"'
    ' >> "$RPCCTL_ROOT/events.log"\n'
)


class Release:
    """A release directory for tests/apps/sampleapp.py, and its runner process."""

    def __init__(
        self,
        root: Path,
        hooks: dict[str, str | tuple[str, int]],
        toml: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.config = root / "rpcctl.toml"
        app = f"command = [{json.dumps(sys.executable)}, {json.dumps(str(APPS / 'sampleapp.py'))}]"
        app_env = {"SAMPLEAPP_MARKER": f"{root}/marker.log", **(env or {})}
        env_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in app_env.items())
        self.config.write_text(
            f'[app]\nname = "sample"\n{app}\nnode = "unix:run/app.sock"\n'
            f"env = {{ {env_toml} }}\nstop_timeout = 5\n" + textwrap.dedent(toml)
        )
        for name, body in hooks.items():
            text, mode = body if isinstance(body, tuple) else (body, 0o755)
            path = root / "rel" / "hooks" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n" + text)
            path.chmod(mode)
        self.proc: subprocess.Popen[str] | None = None
        self.node = f"unix:{root}/run/app.sock"

    def start(self) -> Release:
        self.proc = self.spawn()
        return self

    def spawn(self) -> subprocess.Popen[str]:
        """One more `rpcctl start` process on this release's config."""
        return subprocess.Popen(
            [rpcctl_executable(), "--config", str(self.config), "start"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    def wait(self) -> tuple[int, list[dict[str, Any]]]:
        assert self.proc is not None
        _out, err = self.proc.communicate(timeout=DEADLINE * 3)
        self.stderr = err
        return self.proc.returncode, [json.loads(line) for line in err.splitlines() if line]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def rpcctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_rpcctl("--config", str(self.config), *args)

    def events(self) -> list[str]:
        path = self.root / "events.log"
        return path.read_text().splitlines() if path.exists() else []

    def marker(self) -> list[str]:
        path = self.root / "marker.log"
        return path.read_text().splitlines() if path.exists() else []

    def wait_for_event(self, prefix: str) -> None:
        wait_until(lambda: any(e.startswith(prefix) for e in self.events()), what=prefix)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        for line in self.marker():
            pid = int(line.split()[1])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def by_event(log: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in log if e.get("event") == name]
