"""The runner's stop and restart, release init's output, and the relay of a hook's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog
from runner_support import RECORD, _env, by_event

from conftest import DEADLINE, SAMPLEAPP, run_rpcctl, wait_until


def test_stop_pid_and_restart_through_the_runner(release: Any) -> None:
    r = release({"post_start/10.sh": RECORD, "pre_stop/10.sh": RECORD, "post_stop/10.sh": RECORD})
    r.start()
    r.wait_for_event("post_start")
    first_pid = r.marker()[0].split()[1]
    assert r.rpcctl("pid").stdout == f"{first_pid}\n"

    restarted = r.rpcctl("restart")
    assert restarted.returncode == 0, restarted.stderr
    second_pid = r.rpcctl("pid").stdout.strip()
    assert second_pid != first_pid
    assert f"-> {second_pid}" in restarted.stdout
    wait_until(lambda: len([e for e in r.events() if e.startswith("post_start")]) == 2)

    stopped = r.rpcctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    status, _log = r.wait()
    assert status == 0
    assert r.events() == [
        f"post_start 10.sh app_pid={first_pid}",
        f"pre_stop 10.sh app_pid={first_pid}",
        "post_stop 10.sh app_pid=none",
        f"post_start 10.sh app_pid={second_pid}",
        f"pre_stop 10.sh app_pid={second_pid}",
        "post_stop 10.sh app_pid=none",
    ]
    gone = r.rpcctl("stop")
    assert gone.returncode == 3
    assert "no agent is running" in gone.stderr


def test_stop_without_a_runner(sample_app: Any) -> None:
    pid = sample_app.rpcctl("pid").stdout.strip()
    assert int(pid) == sample_app.proc.pid
    result = sample_app.rpcctl("stop")
    assert (result.returncode, result.stdout) == (0, f"stopped {sample_app.node} (pid {pid})\n")
    assert sample_app.proc.wait(timeout=DEADLINE) == 0  # it shut down by its own SIGTERM handler
    again = sample_app.rpcctl("stop")
    assert again.returncode == 3


def test_stop_that_does_not_finish_in_time_exits_4(short_tmp: Path) -> None:
    from conftest import AppProcess

    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/stubborn.sock",
        env={"SAMPLEAPP_IGNORE_TERM": "1"},
    )
    try:
        result = app.rpcctl("stop", "--timeout", "0.5")
        assert result.returncode == 4
        assert "is still running after 0.5s" in result.stderr
        assert app.rpcctl("ping").returncode == 0  # and still serving
    finally:
        app.proc.kill()
        app.close()


def test_restart_needs_the_runner(sample_app: Any) -> None:
    result = sample_app.rpcctl("restart")
    assert result.returncode == 2
    assert "restart needs the release runner" in result.stderr
    assert sample_app.rpcctl("ping").returncode == 0


def test_stop_never_signals_a_runner_pid_that_is_not_the_apps_parent(short_tmp: Path) -> None:
    from conftest import AppProcess

    # A live process of ours that RPCCTL_RUNNER_PID names: a reused pid, or the runner of
    # a hook that started this app.
    bystander = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/app.sock",
        env={"RPCCTL_RUNNER_PID": str(bystander.pid)},
    )
    try:
        restart = app.rpcctl("restart")
        assert restart.returncode == 2
        assert restart.stderr == (
            f"rpcctl: error: restart needs the release runner (RPCCTL_RUNNER_PID={bystander.pid} "
            f"is not this app's parent (pid {os.getpid()}), so it is not this app's runner); "
            "start the app with `rpcctl start`\n"
        )
        stop = app.rpcctl("stop", "--json")
        assert stop.returncode == 0, stop.stderr
        # (Its "via" may say "gone": the app can be gone before its reply leaves.)
        assert json.loads(stop.stdout)["result"]["pid"] == app.proc.pid
        assert app.proc.wait(timeout=DEADLINE) == 0  # stopped by its own SIGTERM handler
        assert bystander.poll() is None  # never signalled
        events = [json.loads(line) for line in app.stderr().splitlines()]
        ignored = by_event(events, "stop.runner_ignored")
        assert [(e["runner_pid"], e["parent_pid"]) for e in ignored] == [
            (bystander.pid, os.getpid())
        ] * 2
    finally:
        bystander.kill()
        bystander.wait()
        app.close()


# The main thread takes SIGTERM with sigwait, the agent's threads blocking it: a handler
# setting an Event the main thread waits on is not always run when the kernel hands the
# signal to another thread (seen here: the app outlived SIGTERM about one run in ten).
DEMOAPP_MAIN = """
import signal
import app_agent

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
agent = app_agent.start(tasks=["demoapp.tasks"])
signal.sigwait({signal.SIGTERM, signal.SIGINT})
agent.stop()
"""

DEMOAPP_TASKS = """
import os
from app_agent import task

@task
def migrate(revision: str = "head") -> str:
    with open(os.path.join(os.environ["RPCCTL_ROOT"], "migrated"), "w") as f:
        f.write(revision)
    return f"migrated to {revision}"
"""


def test_release_init_output_works_as_is(short_tmp: Path) -> None:
    package = short_tmp / "demoapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(DEMOAPP_MAIN)
    (package / "tasks.py").write_text(DEMOAPP_TASKS)
    init = run_rpcctl("release", "init", "demoapp", cwd=short_tmp)
    assert init.returncode == 0, init.stderr
    assert "wrote" in init.stdout
    again = run_rpcctl("release", "init", "demoapp", cwd=short_tmp)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert "--force" in again.stderr

    launcher = short_tmp / "bin" / "demoapp"
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    # The venv is not on PATH, and the first `python` there is another one (which cannot
    # import the app): the launcher and the app must still run with rpcctl's interpreter.
    wrong = short_tmp / "wrongbin"
    wrong.mkdir()
    (wrong / "python").write_text('#!/bin/sh\necho "the wrong python" >&2\nexit 97\n')
    (wrong / "python").chmod(0o755)
    env = {k: v for k, v in _env().items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{wrong}{os.pathsep}/usr/bin{os.pathsep}/bin"
    runner = subprocess.Popen(
        [str(launcher), "start"],
        cwd=elsewhere,  # the launcher finds its own root
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(
            lambda: (short_tmp / "migrated").exists() or runner.poll() is not None,
            what="the migrate hook",
        )
        assert (short_tmp / "migrated").read_text() == "head", runner.communicate()[1]
        ping = subprocess.run(
            [str(launcher), "ping"], cwd=elsewhere, capture_output=True, text=True, env=env
        )
        assert ping.stdout == "pong\n"
        info = subprocess.run(
            [str(launcher), "info", "--json"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            env=env,
        )
        python = json.loads(info.stdout)["result"]["python"]
        assert os.path.dirname(python) == os.path.dirname(sys.executable)  # the venv's
        stop = subprocess.run(
            [str(launcher), "stop"], cwd=elsewhere, capture_output=True, text=True, env=env
        )
        assert stop.returncode == 0, stop.stderr
        _out, err = runner.communicate(timeout=DEADLINE)
        assert runner.returncode == 0, err
        lines = [json.loads(line) for line in err.splitlines()]
        outputs = [e["line"] for e in by_event(lines, "hook.output")]
        assert "migrated to head" in outputs
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()


def _relayed(text: str) -> list[tuple[str, str]]:
    """What OutputRelay logs for *text*: (event, line or traceback) pairs."""
    from structlog.testing import capture_logs

    from rpcctl.release.hooks import OutputRelay

    with capture_logs() as logs:
        relay = OutputRelay("post_start/10.sh", structlog.get_logger())
        for line in text.splitlines():
            relay.feed(line)
        relay.close()
    assert all(e["hook"] == "post_start/10.sh" for e in logs)
    return [(e["event"], e.get("line", e.get("exception"))) for e in logs]


def _python_stderr(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    ).stderr


def test_relay_keeps_a_chained_traceback_whole() -> None:
    tb = _python_stderr(
        "try:\n    {}['x']\nexcept KeyError as e:\n    raise ValueError('bad\\nmessage') from e"
    )
    assert "The above exception was the direct cause" in tb
    head, _, tail = tb.rstrip("\n").rpartition("\n")  # the message's second line
    assert tail == "message"
    assert _relayed(f"migrating\n{tb}done\n") == [
        ("hook.output", "migrating"),
        ("hook.traceback", head),
        ("hook.output", "message"),  # a message's further lines stay plain output
        ("hook.output", "done"),
    ]


def test_relay_keeps_an_exception_group_whole_and_splits_two_tracebacks() -> None:
    group = _python_stderr("raise ExceptionGroup('many', [ValueError('a'), KeyError('b')])")
    plain = _python_stderr("raise OSError('disk full')")
    chained = _python_stderr(
        "try:\n    raise ExceptionGroup('many', [ValueError('a')])\n"
        "except Exception as e:\n    raise RuntimeError('wrapped') from e"
    )
    assert "The above exception was the direct cause" in chained
    assert _relayed(group + plain + chained + "next\n" + group + "after\n") == [
        ("hook.traceback", group.rstrip("\n")),
        ("hook.traceback", plain.rstrip("\n")),
        ("hook.traceback", chained.rstrip("\n")),
        ("hook.output", "next"),
        ("hook.traceback", group.rstrip("\n")),
        ("hook.output", "after"),
    ]


def test_relay_flushes_a_cut_off_traceback_and_keeps_blank_lines() -> None:
    text = 'one\n\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
    assert _relayed(text) == [
        ("hook.output", "one"),
        ("hook.output", ""),
        (
            "hook.traceback",
            'Traceback (most recent call last):\n  File "x.py", line 1, in <module>',
        ),
    ]
    assert _relayed("Traceback (most recent call last):\n  x\nE: y\n\nnext\n") == [
        ("hook.traceback", "Traceback (most recent call last):\n  x\nE: y"),
        ("hook.output", ""),
        ("hook.output", "next"),
    ]


def test_python_in_the_command_is_rpcctls_interpreter() -> None:
    from rpcctl.release.app import app_command

    assert app_command(["python", "-m", "app"]) == [sys.executable, "-m", "app"]
    assert app_command(["python3", "app.py"]) == [sys.executable, "app.py"]
    assert app_command(["/usr/bin/python3", "app.py"]) == ["/usr/bin/python3", "app.py"]
    assert app_command(["gunicorn", "python"]) == ["gunicorn", "python"]


def test_relay_does_not_gather_without_end() -> None:
    from rpcctl.release.hooks import _MAX_TRACEBACK_LINES

    frames = ["Traceback (most recent call last):"] + ["  more"] * (_MAX_TRACEBACK_LINES + 10)
    relayed = _relayed("\n".join(frames) + "\n")
    # The first lines as one event, the rest line by line.
    assert [event for event, _ in relayed] == ["hook.traceback"] + ["hook.output"] * 11
    assert relayed[0][1].count("\n") == _MAX_TRACEBACK_LINES - 1
