"""The app a release runs: started in a process group of its own, told apart from another
app answering at its node, stopped with SIGTERM then SIGKILL, its stale socket cleared.
Log events keep the runner's names (``runner.app_started``, ``runner.terminating``...).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any, Final

from app_agent.wire import processes
from rpcctl.exceptions import UsageError
from rpcctl.release.config import PYTHON_NAMES, Config

# How far up the process tree the runner looks for its app when another pid answers.
_MAX_ANCESTRY: Final = 64


class App:
    """The app process of one release (none until :meth:`spawn`)."""

    def __init__(self, config: Config, log: Any) -> None:
        self.config = config
        self.log = log
        self.command = app_command(config.command)
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, env: dict[str, str]) -> None:
        try:
            # Its own process group: a Ctrl-C at the terminal reaches the runner only, which
            # then stops the app in order (pre_stop hooks first).
            self.proc = subprocess.Popen(
                self.command, cwd=self.config.cwd, env=env, process_group=0
            )
        except OSError as exc:
            msg = f"cannot run the app's command {self.command}: {exc}"
            raise UsageError(msg) from None
        self.log.info("runner.app_started", pid=self.proc.pid)

    def is_ours(self, pid: int) -> bool:
        """Whether *pid* is the app process or a descendant of it (an app that forks)."""
        if self.proc is None:
            return False
        for _ in range(_MAX_ANCESTRY):
            if pid == self.proc.pid:
                return True
            parent = parent_pid(pid)
            if parent is None or parent <= 1:
                return False
            pid = parent
        return False

    def terminate(self) -> bool:
        """SIGTERM, then SIGKILL after the grace period; True when it ended on SIGTERM."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return True
        self.log.info("runner.terminating", pid=proc.pid, grace_s=self.config.stop_timeout)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.config.stop_timeout)
            clean = True
            self.log.info("runner.app_stopped", pid=proc.pid, status=self.status())
        except subprocess.TimeoutExpired:
            self.log.warning("runner.killing", pid=proc.pid, reason="still running after grace")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            clean = False
        self.clear_socket()
        return clean

    def clear_socket(self) -> None:
        """Once the app is gone: remove the UNIX socket it was given if its agent left it
        behind (an app that dies on SIGTERM never runs its agent.stop()); only a socket
        that nothing answers on, so a new agent's is never touched."""
        address = self.config.address
        if not address.is_unix:
            return
        app_pid = self.pid
        if processes.remove_stale_socket(address.path):
            self.log.info(
                "runner.socket_removed",
                path=address.path,
                reason=f"the app (pid {app_pid}) exited without stopping its agent",
            )

    def killed(self, clean: bool) -> str:
        """What an ending's reason adds when the app had to be killed."""
        if clean:
            return ""
        return f" (killed: it outlived SIGTERM by {self.config.stop_timeout:g}s)"

    def status(self) -> int:
        code = self.proc.returncode if self.proc is not None else 0
        if code is None:
            return 0
        return 128 - code if code < 0 else code

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def app_command(command: list[str]) -> list[str]:
    """*command* with a leading ``python``/``python3`` replaced by rpcctl's own interpreter.

    A release runs in the environment rpcctl is installed in (its virtualenv), whatever
    ``PATH`` says; any other command runs as written.
    """
    if command[0] in PYTHON_NAMES and sys.executable:
        return [sys.executable, *command[1:]]
    return list(command)


def parent_pid(pid: int) -> int | None:
    """The parent of *pid*, or None when it is gone (or cannot be told)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, ValueError, IndexError):
        return None
    try:  # no /proc (macOS, BSD)
        out = subprocess.run(
            ["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return None
    return int(out) if out.isdigit() else None
