"""Boot hooks: a directory of scripts per event, run in name order as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


class HookResult:
    """How one hook script ended."""

    def __init__(self, name: str, status: int | None, duration: float, timed_out: bool) -> None:
        self.name = name
        self.status = status
        self.duration = duration
        self.timed_out = timed_out

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            return f"hook {self.name} was killed after its timeout"
        return f"hook {self.name} exited with status {self.status}"


def scripts(directory: Path, log: Any) -> list[tuple[Path, list[str]]]:
    """The runnable scripts of *directory* in name order, each with its argv.

    Executable files run directly, non-executable ``*.sh`` files with ``sh``; dotfiles are
    ignored; anything else is skipped with a warning that names it.
    """
    if not directory.is_dir():
        log.debug("hooks.none", directory=str(directory), reason="no such directory")
        return []
    found: list[tuple[Path, list[str]]] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_file() and os.access(path, os.X_OK):
            found.append((path, [str(path)]))
        elif path.is_file() and path.suffix == ".sh":
            found.append((path, ["sh", str(path)]))
        else:
            why = "a directory" if path.is_dir() else "neither executable nor a .sh file"
            log.warning("hook.skipped", hook=str(path), reason=f"{why}; chmod +x it or name it .sh")
    if not found:
        log.debug("hooks.none", directory=str(directory), reason="no scripts")
    return found


def run_one(
    path: Path, argv: list[str], env: dict[str, str], cwd: Path, timeout: float, log: Any
) -> HookResult:
    """Run one script, logging its output line by line; kill its process group on timeout."""
    name = f"{path.parent.name}/{path.name}"
    started = time.monotonic()
    log.info("hook.started", hook=name)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,  # its own group: a timeout kills the script and its children
    )
    reader = threading.Thread(target=_relay, args=(proc, name, log), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    reader.join(timeout=5)
    result = HookResult(name, proc.returncode, time.monotonic() - started, timed_out)
    fields = {"hook": name, "status": proc.returncode, "duration_s": round(result.duration, 3)}
    if timed_out:
        log.error("hook.timed_out", timeout_s=timeout, **fields)
    elif result.ok:
        log.info("hook.finished", **fields)
    else:
        log.error("hook.failed", **fields)
    return result


def _relay(proc: subprocess.Popen[bytes], name: str, log: Any) -> None:
    assert proc.stdout is not None
    with proc.stdout:
        for raw in proc.stdout:
            log.info("hook.output", hook=name, line=raw.decode("utf-8", "replace").rstrip("\n"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
