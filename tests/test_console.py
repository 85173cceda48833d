"""`rpcctl remote`: a Python console inside the live app, off unless the app turns it on."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app_agent
import rpcctl
from app_agent import config as agent_config
from app_agent.exceptions import ConfigurationError
from conftest import DEADLINE, SAMPLEAPP, AppProcess, rpcctl_executable, run_rpcctl, wait_until
from rpcctl.cli.remote import history_path, script_statements

ENABLE = (
    "rpcctl: error: the remote console is off in this app: enable it with "
    "app_agent.start(console=True) or RPCCTL_CONSOLE=1 in the app's environment (a console "
    "runs any Python code inside the app: see docs/security.md)\n"
)


def console_app(short_tmp: Path, **env: str) -> AppProcess:
    return AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"RPCCTL_CONSOLE": "1", **env},
    )


def remote(app: AppProcess, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`rpcctl remote` with *script* on stdin (not a terminal: script mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    return subprocess.run(
        [rpcctl_executable(), "-n", app.node, "remote", *options],
        input=textwrap.dedent(script),
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE * 3,
        check=False,
    )


def finish(app: AppProcess) -> tuple[list[str], list[dict[str, Any]]]:
    """Stop *app*: everything it wrote on its stdout, and its log events."""
    app.stop()
    assert app.proc.stdout is not None
    stdout = app.stdout_lines + app.proc.stdout.readlines()
    events = [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]
    app.close()
    return stdout, events


def by_event(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


# -- off by default ----------------------------------------------------------------------------


def test_the_console_is_refused_when_the_app_did_not_turn_it_on(sample_app: AppProcess) -> None:
    result = remote(sample_app, "import os\nos.getpid()\n")
    assert result.returncode == 5
    assert result.stderr == ENABLE
    assert result.stdout == ""
    _stdout, events = finish(sample_app)
    refused = by_event(events, "console.refused")
    assert len(refused) == 1
    assert refused[0]["caller"].startswith("uid=")
    assert refused[0]["auth"] == "peer-uid"
    assert not by_event(events, "console.statement")


def test_an_explicit_no_beats_the_environment(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPCCTL_CONSOLE", "1")
    with (
        app_agent.start(node=f"unix:{short_tmp}/a.sock", console=False) as agent,
        rpcctl.connect(agent.node) as app,
        pytest.raises(rpcctl.AuthenticationFailed, match="the remote console is off"),
    ):
        app.console_open()


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_bad_switch_value_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RPCCTL_CONSOLE", value)
    with pytest.raises(ConfigurationError, match=f"RPCCTL_CONSOLE='{value}': expected 1"):
        agent_config.load("unix:/tmp/x.sock")
    monkeypatch.setenv("RPCCTL_CONSOLE", "yes")
    assert agent_config.load("unix:/tmp/x.sock").console is True
    with pytest.raises(ConfigurationError, match="console must be True or False"):
        agent_config.load("unix:/tmp/x.sock", console="on")


# -- scripts -------------------------------------------------------------------------------------


def test_a_script_runs_in_the_app_and_stops_at_the_first_exception(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    result = remote(
        app,
        """\
        import os, sys
        os.getpid()
        print("hello from", __name__)
        print("to stderr", file=sys.stderr)

        @staticmethod
        def twice(x):
            return 2 * x

        twice.__func__(21); app_agent.__name__
        1 / 0
        print("never")
        """,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        str(app.proc.pid),  # the app's pid: the statement ran in the app
        "hello from __console__",
        "42",
        "'app_agent'",
    ]
    assert "to stderr" in result.stderr
    assert 'File "<console>", line 1, in <module>\nZeroDivisionError: division by zero' in (
        result.stderr
    )
    assert result.stderr.endswith(
        "rpcctl: error: the statement at line 11 raised ZeroDivisionError: division by zero; "
        "the rest of the script was not run\n"
    )
    stdout, events = finish(app)
    assert stdout == [f"READY {app.node}\n"]  # nothing of the console on the app's stdout
    [opened] = by_event(events, "console.opened")
    session = opened["session"]
    assert opened["caller"].startswith("uid=")
    assert opened["auth"] == "peer-uid"
    assert opened["log_statements"] is False
    statements = by_event(events, "console.statement")
    assert [(s["statement"], s["lines"]) for s in statements] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 3),
        (6, 1),
        (7, 1),
    ]
    assert statements[0]["bytes"] == len("import os, sys\n")
    assert all("source" not in s for s in statements)  # the app did not opt in
    assert all(s["session"] == session for s in statements)
    finished = by_event(events, "console.statement_finished")
    assert [f["outcome"] for f in finished] == ["succeeded"] * 6 + ["failed"]
    assert finished[-1]["error"] == "ZeroDivisionError"
    [closed] = by_event(events, "console.closed")
    assert (closed["statements"], closed["failed"]) == (7, 1)
    assert closed["reason"] == "closed by the client"


def test_statement_text_is_audited_only_when_the_app_opts_in(short_tmp: Path) -> None:
    app = console_app(short_tmp, RPCCTL_CONSOLE_LOG_STATEMENTS="1")
    assert remote(app, "x = 'audited'\n").returncode == 0
    _stdout, events = finish(app)
    [statement] = by_event(events, "console.statement")
    assert statement["source"] == "x = 'audited'\n"
    assert by_event(events, "console.opened")[0]["log_statements"] is True


def test_exits_and_interrupts_raised_by_a_statement_never_end_the_app(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    try:
        ending = ["raise SystemExit(3)", "raise KeyboardInterrupt", "import sys; sys.exit(0)"]
        for statement in ending:
            assert remote(app, statement + "\n").returncode == 1
            assert app.alive()
            assert app.rpcctl("ping").stdout == "pong\n"
        assert "SystemExit: 3" in remote(app, "raise SystemExit(3)\n").stderr
    finally:
        app.close()


def test_a_script_with_json_output(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    try:
        ok = remote(app, "print('a')\n21 * 2\n", "--json")
        assert ok.returncode == 0, ok.stderr
        documents = [json.loads(line) for line in ok.stdout.splitlines()]
        assert [(d["type"], d["line"]) for d in documents[:-1]] == [
            ("stdout", "a"),
            ("stdout", "42"),
        ]
        assert documents[-1] == {"ok": True, "result": {"statements": 2}}
        failed = remote(app, "1 / 0\n", "--json")
        assert failed.returncode == 1
        documents = [json.loads(line) for line in failed.stdout.splitlines()]
        assert documents[-2]["line"] == "ZeroDivisionError: division by zero"
        assert documents[-1]["ok"] is False
        assert documents[-1]["error"]["exit_code"] == 1
    finally:
        app.close()


def test_ctrl_c_interrupts_a_script_and_exits_130(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    script = short_tmp / "script.py"
    script.write_text("if True:\n    print('started')\n    while True: pass\nprint('never')\n")
    with script.open() as stdin:
        proc = subprocess.Popen(
            [rpcctl_executable(), "-n", app.node, "remote"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "never" not in out
    assert "KeyboardInterrupt" in err  # the statement's own traceback, from the app
    assert err.endswith("rpcctl: interrupted\n")
    assert app.alive()
    _stdout, events = finish(app)
    assert [e.get("error") for e in by_event(events, "console.statement_finished")] == [
        "KeyboardInterrupt"
    ]


def test_json_needs_a_script(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "TMUX"))}
    tmux = Tmux(short_tmp, env)
    command = f"{rpcctl_executable()} -n {app.node} remote --json; echo EXITED=$?; exec cat"
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "160", "-y", "20", command)
        screen = tmux.wait_for("EXITED=2")
    finally:
        tmux.kill()
        app.close()
    assert "rpcctl: error: --json is for scripts: `rpcctl remote --json < FILE`" in screen


def test_the_console_methods_check_their_arguments(console_agent: app_agent.Agent) -> None:
    with rpcctl.connect(console_agent.node) as app:
        app.console_open()
        for method, args in (
            ("console_push", (123, 1.0)),
            ("console_push", ("1", -1.0)),
            ("console_poll", ("0", 1.0)),
        ):
            with pytest.raises(rpcctl.UsageError, match="takes"):
                app._connection.reply(app._connection.request(method, 5.0, *args))
        with pytest.raises(rpcctl.UsageError, match="no statement has run"):
            app.console_poll(0, 0.0)
        with pytest.raises(rpcctl.UsageError, match="at most 1,048,576 characters"):
            app.console_push("x" * ((1 << 20) + 1), 0.0)


def test_a_script_that_does_not_parse_runs_nothing(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    result = remote(app, "print('a')\nx = (1\n")
    assert result.returncode == 2
    assert result.stderr == "rpcctl: error: <stdin> line 2: '(' was never closed; nothing was run\n"
    _stdout, events = finish(app)
    assert not by_event(events, "console.opened")


def test_script_statements_split_at_top_level() -> None:
    source = textwrap.dedent(
        """\
        import os; x = 1

        @decorator
        @other(
            1,
        )
        def f():

            return '''a
        b'''
        if x:
            pass
        else:
            pass
        """
    )
    assert script_statements(source) == [
        (1, "import os; x = 1\n"),
        (3, "@decorator\n@other(\n    1,\n)\ndef f():\n\n    return '''a\nb'''\n"),
        (11, "if x:\n    pass\nelse:\n    pass\n"),
    ]


# -- the Python API, in this process -------------------------------------------------------------


@pytest.fixture
def console_agent(short_tmp: Path) -> Iterator[app_agent.Agent]:
    agent = app_agent.start(node=f"unix:{short_tmp}/agent.sock", app="inproc", console=True)
    try:
        yield agent
    finally:
        agent.stop()


def run_to_end(app: rpcctl.Client, source: str) -> dict[str, Any]:
    return poll_to_end(app, app.console_push(source, 0.5))


def poll_to_end(app: rpcctl.Client, snapshot: dict[str, Any]) -> dict[str, Any]:
    """The statement's last snapshot, with every event it sent from *snapshot* on."""
    events = list(snapshot["events"])
    while snapshot["state"] == "running":
        snapshot = app.console_poll(snapshot["cursor"], 0.5)
        events += snapshot["events"]
    return {**snapshot, "events": events}


def lines(snapshot: dict[str, Any], stream: str) -> list[str]:
    return [e["line"] for e in snapshot["events"] if e["type"] == stream]


def test_the_console_through_the_client_api(
    console_agent: app_agent.Agent, capfd: pytest.CaptureFixture[str]
) -> None:
    with rpcctl.connect(console_agent.node) as app:
        opened = app.console_open()
        assert opened["pid"] == os.getpid()
        assert opened["app"] == "inproc"
        assert lines(run_to_end(app, "x = 41\nprint('printed')\nx + 1"), "stdout") == [
            "printed",
            "42",
        ]
        assert lines(run_to_end(app, "_ * 2"), "stdout") == ["84"]  # the session's own _
        failed = run_to_end(app, "def f():\n    raise ValueError('inner')\nf()")
        assert failed["state"] == "failed"
        assert failed["error"]["type"] == "ValueError"
        assert lines(failed, "stderr")[-1] == "ValueError: inner"
        with pytest.raises(rpcctl.UsageError, match="a console session is already open"):
            app.console_open()
        assert app.console_close() == {"statements": 3, "failed": 1}
    # Nothing reached this process's own stdout or stderr, nor builtins._.
    captured = capfd.readouterr()
    assert "printed" not in captured.out
    assert "42" not in captured.out
    assert "inner" not in captured.err
    assert getattr(__builtins__, "_", None) != 84


def console_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rpcctl-console-")]


def test_a_running_statement_is_interrupted(console_agent: app_agent.Agent) -> None:
    with rpcctl.connect(console_agent.node) as app:
        app.console_open()
        running = app.console_push(
            "import app_agent\ntry:\n    n = 0\n    while True:\n        n += 1\nfinally:\n"
            "    print('cancelled:', app_agent.cancelled())",
            0.0,
        )
        assert running["state"] == "running"
        with pytest.raises(rpcctl.UsageError, match="a statement is still running"):
            app.console_push("1", 0.0)
        assert app.console_interrupt() is True
        ended = poll_to_end(app, running)
        assert ended["state"] == "failed"
        assert ended["error"]["type"] == "KeyboardInterrupt"
        assert lines(ended, "stdout") == ["cancelled: True"]
        assert app.console_interrupt() is False  # nothing runs now
        assert lines(run_to_end(app, "'goes on'"), "stdout") == ["'goes on'"]
    wait_until(lambda: not console_threads(), what="the console's threads to end")


def test_a_lost_connection_ends_the_session_and_its_statement(short_tmp: Path) -> None:
    from structlog.testing import capture_logs

    with (
        capture_logs() as logs,
        app_agent.start(node=f"unix:{short_tmp}/agent.sock", console=True) as agent,
    ):
        app = rpcctl.connect(agent.node)
        app.console_open()
        assert app.console_push("while True: pass", 0.0)["state"] == "running"
        app.close()
        wait_until(lambda: not console_threads(), what="the statement to be interrupted")
        wait_until(lambda: any(e["event"] == "console.closed" for e in logs), what="closed")
    [closed] = [e for e in logs if e["event"] == "console.closed"]
    assert closed["reason"] == "connection closed"
    assert closed["interrupted_running"] is True
    [finished] = [e for e in logs if e["event"] == "console.statement_finished"]
    assert finished["error"] == "KeyboardInterrupt"


def test_without_a_session_the_console_methods_are_usage_errors(
    console_agent: app_agent.Agent,
) -> None:
    with rpcctl.connect(console_agent.node) as app:
        with pytest.raises(rpcctl.UsageError, match="no console session on this connection"):
            app.console_push("1")
        with pytest.raises(rpcctl.UsageError, match="no console session"):
            app.console_interrupt()


# -- a real terminal -----------------------------------------------------------------------------


class Tmux:
    """One tmux server of the test's own (its socket in the test's directory)."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        found = shutil.which("tmux")
        if found is None:
            pytest.skip("tmux is not installed (apt-get install tmux): no terminal to drive")
        self.tmux = found
        self.socket = str(directory / "tmux.sock")
        self.env = env

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            [self.tmux, "-S", self.socket, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
            timeout=DEADLINE,
        ).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-J", "-S", "-200", "-t", "console")

    def wait_for(self, text: str, after: int = 0) -> str:
        """Poll the pane until *text* shows (past character *after*); the screen."""
        deadline = time.monotonic() + DEADLINE
        delay = 0.01
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen[after:]:
                return screen
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        pytest.fail(f"{text!r} never showed in the terminal:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"], capture_output=True, check=False
        )


def test_the_console_in_a_real_terminal(short_tmp: Path) -> None:
    app = console_app(short_tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "TMUX"))}
    env.update(
        {"TERM": "xterm", "XDG_STATE_HOME": str(short_tmp / "state"), "HOME": str(short_tmp)}
    )
    tmux = Tmux(short_tmp, env)
    command = f"{rpcctl_executable()} -n {app.node} remote; echo EXITED=$?; exec cat"
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "160", "-y", "50", command)
        tmux.wait_for(f"inside sampleapp (pid {app.proc.pid})")
        tmux.wait_for(">>> ")

        tmux("send-keys", "-t", "console", "import os", "Enter", "os.getpid()", "Enter")
        screen = tmux.wait_for(f"\n{app.proc.pid}\n")  # the app's pid, not rpcctl's

        mark = len(screen.rstrip())
        tmux("send-keys", "-t", "console", "1/0", "Enter")
        screen = tmux.wait_for("ZeroDivisionError: division by zero\n>>> ", mark)
        assert 'File "<console>", line 1, in <module>' in screen[mark:]

        mark = len(screen.rstrip())
        tmux("send-keys", "-t", "console", "def twice(x):", "Enter")
        tmux.wait_for("... ", mark)
        tmux("send-keys", "-t", "console", "    return 2 * x", "Enter", "Enter")
        tmux("send-keys", "-t", "console", "for i in range(2):", "Enter")
        tmux("send-keys", "-t", "console", "    print(twice(i + 20))", "Enter", "Enter")
        screen = tmux.wait_for("\n40\n42\n>>> ", mark)

        mark = len(screen.rstrip())
        tmux("send-keys", "-t", "console", "if True:", "Enter")
        tmux("send-keys", "-t", "console", "    print('looping', flush=True)", "Enter")
        tmux("send-keys", "-t", "console", "    while True: pass", "Enter", "Enter")
        tmux.wait_for("\nlooping\n", mark)
        tmux("send-keys", "-t", "console", "C-c")
        screen = tmux.wait_for("KeyboardInterrupt\n>>> ", mark)
        assert 'File "<console>", line 3, in <module>' in screen[mark:]

        mark = len(screen.rstrip())
        tmux("send-keys", "-t", "console", "print('still', 'here')", "Enter")
        screen = tmux.wait_for("\nstill here\n>>> ", mark)

        tmux("send-keys", "-t", "console", "C-d")
        tmux.wait_for("EXITED=0", len(screen.rstrip()))
    finally:
        tmux.kill()
    assert app.alive()
    stdout, events = finish(app)
    assert stdout == [f"READY {app.node}\n"]
    assert len(by_event(events, "console.statement")) == 7
    assert [e["error"] for e in by_event(events, "console.statement_finished") if "error" in e] == [
        "ZeroDivisionError",
        "KeyboardInterrupt",
    ]
    assert len(by_event(events, "console.interrupted")) == 1
    [closed] = by_event(events, "console.closed")
    assert closed["reason"] == "closed by the client"
    # The history is kept, owner-only (statements may carry secrets).
    history = short_tmp / "state" / "rpcctl" / "console_history"
    assert "os.getpid()" in history.read_text()
    assert history.stat().st_mode & 0o777 == 0o600
    assert history_path() != history  # this process's own default is untouched


def test_the_console_keeps_its_connection_past_the_idle_timeout(short_tmp: Path) -> None:
    app = console_app(short_tmp, RPCCTL_IDLE_TIMEOUT="1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "TMUX"))}
    env.update({"TERM": "xterm", "XDG_STATE_HOME": str(short_tmp / "state")})
    tmux = Tmux(short_tmp, env)
    command = f"{rpcctl_executable()} -n {app.node} remote; echo EXITED=$?; exec cat"
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "160", "-y", "50", command)
        screen = tmux.wait_for(">>> ")
        # Sit at the prompt past the agent's idle timeout: a connection opened now and left
        # idle is closed by the agent, the console's is kept by its keepalive.
        with rpcctl.connect(app.node) as canary:
            wait_until(
                lambda: closed_by_peer(canary._connection.sock), what="the idle canary to close"
            )
        tmux("send-keys", "-t", "console", "'alive'", "Enter")
        tmux.wait_for("'alive'\n>>> ", len(screen.rstrip()))
        tmux("send-keys", "-t", "console", "C-d")
        tmux.wait_for("EXITED=0")
    finally:
        tmux.kill()
    _stdout, events = finish(app)
    assert len(by_event(events, "connection.idle_closed")) == 1  # the canary's only
    [closed] = by_event(events, "console.closed")
    assert closed["reason"] == "closed by the client"


def closed_by_peer(sock: Any) -> bool:
    """Whether the other end closed *sock* (readable, and nothing to read)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


def test_history_goes_to_the_xdg_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert history_path() == Path("/srv/state/rpcctl/console_history")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/op")
    assert history_path() == Path("/home/op/.local/state/rpcctl/console_history")


def test_the_cli_names_the_console_in_its_help() -> None:
    result = run_rpcctl("remote", "--help")
    assert "RPCCTL_CONSOLE=1" in result.stdout
