"""`remote`: an interactive Python console inside the live app (off unless the app enables it).

The client side of :mod:`app_agent._console.session`: line editing and history (readline) and the
detection of complete blocks (``code``/``codeop``) happen here; each complete block is
sent to the app, run there, and its output long-polled and shown. Ctrl-C while a
statement runs asks the app to interrupt it; at the prompt it clears the line; Ctrl-D
ends the session (exit 0). Without a terminal on stdin the input is a script: its
top-level statements run in order, and the first that raises ends it (exit 1).
"""

from __future__ import annotations

import ast
import code
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from rpcctl import client as client_mod
from rpcctl._render import EventPrinter
from rpcctl._settings import Settings
from rpcctl.cli._common import emit_json, json_option, pass_settings
from rpcctl.cli._group import cli
from rpcctl.exceptions import BadExpression, ConfigError, RpcctlError, TaskFailed

PUSH_WAIT = 0.5
"""Seconds the app may take to answer a statement at once (most take less)."""
POLL_WAIT = 0.25
"""Seconds one poll waits for news: also how soon a Ctrl-C reaches a running statement."""
HISTORY_LENGTH = 1000


@cli.command()
@json_option
@pass_settings
def remote(settings: Settings) -> None:
    """Open a Python console inside the running app (off unless the app enables it).

    Statements run in the app's process, in a namespace with app_agent and the app's
    __main__ module; their output and tracebacks show here, never on the app's stdout.
    Multi-line blocks end with an empty line. Ctrl-C interrupts the running statement
    (where possible), Ctrl-D ends the session. With stdin not a terminal
    (rpcctl remote < script.py) the script's statements run in order, and the first that
    raises ends it with exit 1; --json then prints the output as JSON lines and an
    envelope. The app turns the console on with app_agent.start(console=True) or
    RPCCTL_CONSOLE=1; otherwise exit 5.
    """
    settings.single("remote")
    interactive = sys.stdin.isatty()
    if interactive and settings.json:
        msg = f"--json is for scripts: `{settings.prog} remote --json < FILE`"
        raise ConfigError(msg)
    # A script is parsed whole first: one that cannot run opens no session in the app.
    script = None if interactive else script_statements(sys.stdin.read())
    with settings.connect() as conn:
        session = RemoteSession(conn, conn.console_open(), as_json=settings.json)
        try:
            if script is None:
                interact(session)
            else:
                run_script(session, script)
        finally:
            session.close()
    if script is not None and settings.json:
        emit_json({"ok": True, "result": {"statements": len(script)}})


class RemoteSession:
    """A console session over one connection: statements in, their output out.

    A keepalive thread pings the agent while the session sits at the prompt, so the
    agent's idle timeout does not close it; a lock keeps it and the statements from using
    the connection at once.
    """

    def __init__(
        self, conn: client_mod.Client, opened: dict[str, Any], as_json: bool = False
    ) -> None:
        self.conn = conn
        self.opened = opened
        self.as_json = as_json  # output as JSON lines (scripts), as rpc --json prints events
        self.interrupted = False  # Ctrl-C was pressed while a statement ran
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._interrupts = 0
        idle = float(opened.get("idle_timeout") or 300.0)
        self._keepalive = threading.Thread(
            target=self._keep_alive,
            args=(min(max(idle / 3, 0.1), 60.0),),
            name="rpcctl-console-keepalive",
            daemon=True,
        )
        self._keepalive.start()

    def run(self, source: str) -> dict[str, Any]:
        """Run *source* in the app, showing its output as it comes; its last snapshot."""
        printer = EventPrinter(self.as_json)
        try:
            with self._ctrl_c_interrupts():
                with self._lock:
                    snapshot = self.conn.console_push(source, PUSH_WAIT)
                while True:
                    if snapshot.get("dropped"):
                        printer(client_mod.dropped_event(0, snapshot["dropped"]))
                    for event in snapshot["events"]:
                        printer(event)
                    if snapshot["state"] != "running":
                        return snapshot
                    with self._lock:
                        if self._interrupts:
                            self._interrupts = 0
                            self.conn.console_interrupt()
                        snapshot = self.conn.console_poll(snapshot["cursor"], POLL_WAIT)
        finally:
            printer.close()

    @contextlib.contextmanager
    def _ctrl_c_interrupts(self) -> Iterator[None]:
        """While a statement runs, Ctrl-C asks the app to interrupt it (the next poll
        sends it) instead of raising here, in the middle of a reply."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(_signum: int, _frame: object) -> None:
            self._interrupts += 1
            self.interrupted = True

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _keep_alive(self, every: float) -> None:
        while not self._stopping.wait(every):
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self.conn.ping()
                except RpcctlError:
                    return  # the next statement reports the lost connection

    def close(self) -> None:
        self._stopping.set()
        with self._lock, contextlib.suppress(RpcctlError):
            self.conn.console_close()


class _Console(code.InteractiveConsole):
    """The standard interactive loop (prompts, blocks, Ctrl-C at the prompt, Ctrl-D),
    with each complete block run in the app instead of here."""

    def __init__(self, session: RemoteSession) -> None:
        super().__init__(filename="<console>")
        self.session = session

    def runsource(self, source: str, filename: str = "<console>", symbol: str = "single") -> bool:
        try:
            compiled = self.compile(source, filename, symbol)
        except (OverflowError, SyntaxError, ValueError):
            self.showsyntaxerror(filename)  # shown here: nothing is sent
            return False
        if compiled is None:
            return True  # an incomplete block: ask for more
        self.session.run(source)
        return False


def interact(session: RemoteSession) -> None:
    """The interactive console, with line editing and a history file when readline is
    available; returns on Ctrl-D."""
    opened = session.opened
    history = _readline_history()
    banner = (
        f"Python {opened.get('python')} inside {opened.get('app')} (pid {opened.get('pid')}) "
        f"at {opened.get('node')}: statements run in the app's process.\n"
        "app_agent and __main__ (the app's main module) are at hand. "
        "Ctrl-C interrupts a statement, Ctrl-D ends the session."
    )
    if opened.get("log_statements"):
        banner += "\nThe app records every statement's text in its audit log."
    try:
        _Console(session).interact(banner=banner, exitmsg="")
    finally:
        if history is not None:
            _save_history(history)


def script_statements(source: str, name: str = "<stdin>") -> list[tuple[int, str]]:
    """The top-level statements of a script, each with its first line number (statements
    sharing a line stay together). BadExpression (exit 2) when it does not parse."""
    try:
        tree = ast.parse(source, name)
    except (SyntaxError, ValueError) as exc:
        where = f"{name} line {exc.lineno}" if isinstance(exc, SyntaxError) else name
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        msg = f"{where}: {reason}; nothing was run"
        raise BadExpression(msg) from None
    lines = source.splitlines(keepends=True)
    chunks: list[tuple[int, int]] = []
    for node in tree.body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        last = node.end_lineno or node.lineno
        if chunks and first <= chunks[-1][1]:
            chunks[-1] = (chunks[-1][0], max(last, chunks[-1][1]))
        else:
            chunks.append((first, last))
    return [(first, "".join(lines[first - 1 : last])) for first, last in chunks]


def run_script(session: RemoteSession, statements: list[tuple[int, str]]) -> None:
    """Run a script's statements (:func:`script_statements`) in order; the first that
    raises ends it (TaskFailed, exit 1; its traceback has been shown). Ctrl-C ends it with
    exit 130."""
    for line, statement in statements:
        snapshot = session.run(statement)
        if session.interrupted:
            raise KeyboardInterrupt
        if snapshot["state"] != "succeeded":
            error = snapshot.get("error") or {}
            msg = (
                f"the statement at line {line} raised {error.get('type', 'an exception')}"
                f"{': ' + error['message'] if error.get('message') else ''}; "
                "the rest of the script was not run"
            )
            raise TaskFailed(msg)


def history_path() -> Path:
    """Where the console's history is kept: ``$XDG_STATE_HOME/rpcctl/console_history``
    (``~/.local/state`` by default), owner-only (statements may carry secrets)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "rpcctl" / "console_history"


def _readline_history() -> Path | None:
    try:
        import readline
    except ImportError:  # no line editing on this Python: the console works without
        return None
    if "libedit" not in (readline.__doc__ or ""):
        readline.parse_and_bind("tab: tab-insert")  # indentation, not completion
    readline.set_history_length(HISTORY_LENGTH)
    path = history_path()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    return path


def _save_history(path: Path) -> None:
    import readline

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        readline.write_history_file(path)
    except OSError as exc:
        click.echo(f"rpcctl: warning: cannot save the console history to {path}: {exc}", err=True)
