"""Boot hooks: a directory of scripts per event, run in name order as subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Final

# The first line of a Python traceback, an exception group's included.
_TRACEBACK: Final = re.compile(
    r"^\s*(\+ )?(Exception Group )?Traceback \(most recent call last\):$"
)
# A longer "traceback" is logged in pieces of this many lines.
_MAX_TRACEBACK_LINES: Final = 2000
# What Python prints between the tracebacks of chained exceptions.
_CHAINED: Final = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


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
    """Run one script, logging its output line by line (a Python traceback as one event);
    kill its process group on timeout."""
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
    relay = OutputRelay(name, log)
    with proc.stdout:
        for raw in proc.stdout:
            relay.feed(raw.decode("utf-8", "replace").rstrip("\n"))
    relay.close()


class OutputRelay:
    """Logs a hook's output: each line as a ``hook.output`` event as it comes, except a Python
    traceback (chained ones included), which becomes one ``hook.traceback`` event whose
    ``exception`` field holds it whole.

    A traceback ends at its first unindented line (``ValueError: ...``) unless chained
    exceptions follow; a message or notes spanning more lines continue as plain lines.
    """

    def __init__(self, name: str, log: Any) -> None:
        self.name = name
        self.log = log
        self._block: list[str] = []  # the traceback being gathered
        self._state = "text"  # or "frames", "after" (its exception line), "chain"
        self._held: list[str] = []  # blank lines after an exception line: a chain may follow
        self._group = False  # the traceback being read is an exception group's

    def feed(self, line: str) -> None:
        if len(self._block) >= _MAX_TRACEBACK_LINES:
            self._flush()  # output that only looks like a traceback: log it as it comes
        state = self._state
        start = _TRACEBACK.match(line)
        if state == "text":
            if start:
                self._block, self._state, self._group = [line], "frames", bool(start[2])
            else:
                self.log.info("hook.output", hook=self.name, line=line)
        elif state == "frames":
            if line in _CHAINED:
                self._block.append(line)
                self._state = "chain"
            elif start or (self._group and line and not line[0].isspace()):
                # Another traceback, or past an exception group (whose lines are indented).
                self._flush()
                self.feed(line)
            else:
                self._block.append(line)
                if line and not line[0].isspace():
                    self._state = "after"
        elif state == "after":
            if not line.strip():
                self._held.append(line)
            elif line in _CHAINED and self._held:
                self._block += [*self._held, line]
                self._held, self._state = [], "chain"
            else:
                self._flush()
                self.feed(line)
        elif not line.strip():  # "chain": blank lines, then the next traceback
            self._block.append(line)
        elif start:
            self._block.append(line)
            self._state, self._group = "frames", bool(start[2])
        else:
            self._flush()
            self.feed(line)

    def close(self) -> None:
        """The output has ended: log what is still gathered."""
        if self._state != "text":
            self._flush()

    def _flush(self) -> None:
        text = "\n".join(self._block).rstrip()
        held = self._held
        self._block, self._held, self._state = [], [], "text"
        self.log.warning("hook.traceback", hook=self.name, exception=text)
        for line in held:
            self.log.info("hook.output", hook=self.name, line=line)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
