"""`rpcctl start` and friends with real processes: hooks, signals, policies, stop, restart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import APPS, DEADLINE, SAMPLEAPP, rpcctl_executable, run_rpcctl, wait_until

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
        self.proc = subprocess.Popen(
            [rpcctl_executable(), "--config", str(self.config), "start"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        return self

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


@pytest.fixture
def release(short_tmp: Path) -> Iterator[Any]:
    made: list[Release] = []

    def make(
        hooks: dict[str, str | tuple[str, int]], toml: str = "", env: dict[str, str] | None = None
    ) -> Release:
        r = Release(short_tmp, hooks, toml, env)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def by_event(log: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in log if e.get("event") == name]


def test_hooks_run_in_order_with_their_environment_after_ping(release: Any) -> None:
    r = release(
        {
            "pre_start/10-first.sh": RECORD
            + 'echo "env $RPCCTL_APP $RPCCTL_NODE $RPCCTL_ROOT" >> "$RPCCTL_ROOT/events.log"\n',
            "pre_start/20-second": RECORD,  # executable without .sh: run directly
            "post_start/10-ping.sh": RECORD
            + '"$RPCCTL" ping >/dev/null 2>&1; echo "ping=$?" >> "$RPCCTL_ROOT/events.log"\n',
            "pre_stop/10-rpc.sh": RECORD
            + '"$RPCCTL" rpc \'sampleapp.echo("alive")\' >> "$RPCCTL_ROOT/events.log"\n',
            "post_stop/10-gone.sh": RECORD
            + '"$RPCCTL" ping >/dev/null 2>&1; echo "ping=$?" >> "$RPCCTL_ROOT/events.log"\n',
        },
        # The agent comes up two seconds after the process: post_start must wait for it.
        env={"SAMPLEAPP_AGENT_DELAY": "2"},
    )
    r.start()
    r.wait_for_event("ping=")
    app_pid = r.marker()[0].split()[1]
    r.signal(signal.SIGTERM)
    status, log = r.wait()
    assert status == 0, r.stderr
    assert r.events() == [
        "pre_start 10-first.sh app_pid=none",
        f"env sample {r.node} {r.root}",
        "pre_start 20-second app_pid=none",
        f"post_start 10-ping.sh app_pid={app_pid}",
        "ping=0",  # the agent answered before post_start ran, despite its late start
        f"pre_stop 10-rpc.sh app_pid={app_pid}",
        "alive",  # pre_stop could still rpc the app
        "post_stop 10-gone.sh app_pid=none",
        "ping=3",  # post_stop sees it gone
    ]
    finished = by_event(log, "hook.finished")
    assert [e["hook"] for e in finished][:3] == [
        "pre_start/10-first.sh",
        "pre_start/20-second",
        "post_start/10-ping.sh",
    ]
    assert all("duration_s" in e and e["status"] == 0 for e in finished)
    assert by_event(log, "runner.stopped")[-1]["status"] == 0


def test_failing_pre_start_keeps_the_app_down(release: Any) -> None:
    r = release({"pre_start/10-check.sh": "echo 'disk full' >&2; exit 3\n"})
    status, log = r.start().wait()
    assert status == 1
    assert r.marker() == []  # the app never started
    reason = by_event(log, "runner.not_started")[0]["reason"]
    assert reason == "pre_start hook pre_start/10-check.sh exited with status 3"
    assert by_event(log, "hook.output")[0]["line"] == "disk full"


def test_failing_post_start_stops_the_app(release: Any) -> None:
    r = release({"post_start/10-migrate.sh": "exit 9\n", "post_stop/10.sh": RECORD})
    status, log = r.start().wait()
    assert status == 1
    started, stopped = r.marker()
    assert started.startswith("started")
    assert stopped.startswith("stopped")
    assert by_event(log, "runner.stopping")[0]["reason"] == (
        "post_start hook post_start/10-migrate.sh exited with status 9"
    )
    assert r.events() == ["post_stop 10.sh app_pid=none"]


def test_continue_policy_goes_on(release: Any) -> None:
    r = release(
        {"post_start/10-fail.sh": "exit 4\n", "post_start/20-next.sh": RECORD},
        toml='[hooks.on_failure]\npost_start = "continue"\n',
    )
    r.start()
    r.wait_for_event("post_start 20-next.sh")
    assert r.rpcctl("ping").returncode == 0
    r.signal(signal.SIGINT)
    status, log = r.wait()
    assert status == 0
    assert by_event(log, "hook.failure_ignored")[0]["hook"] == "post_start/10-fail.sh"


def test_app_crash_exits_with_its_status_and_runs_post_stop(release: Any) -> None:
    r = release({"post_stop/10.sh": RECORD, "pre_stop/10.sh": RECORD})
    r.start()
    assert run_rpcctl("-n", r.node, "ping", "--wait", str(DEADLINE)).returncode == 0
    r.rpcctl("rpc", "sampleapp.crash(7)")  # the connection dies with the app
    status, log = r.wait()
    assert status == 7
    assert by_event(log, "runner.app_exited")[0]["status"] == 7
    assert r.events() == ["post_stop 10.sh app_pid=none"]  # no pre_stop: it was already gone


def test_hook_past_its_timeout_is_killed(release: Any) -> None:
    r = release(
        {"pre_start/10-hang.sh": "echo waiting; sleep 60\n"},
        toml="[hooks]\ntimeout = 0.5\n",
    )
    status, log = r.start().wait()
    assert status == 1
    assert by_event(log, "hook.timed_out")[0]["hook"] == "pre_start/10-hang.sh"
    assert "killed after its timeout" in by_event(log, "runner.not_started")[0]["reason"]


def test_unrunnable_files_are_named_in_a_warning(release: Any) -> None:
    r = release(
        {
            "pre_start/README.txt": ("not a script\n", 0o644),
            "pre_start/.hidden.sh": ("exit 1\n", 0o755),
            "pre_start/10-plain.sh": (RECORD, 0o644),  # not executable, but .sh: run with sh
        }
    )
    r.start()
    r.wait_for_event("pre_start 10-plain.sh")
    r.signal(signal.SIGTERM)
    status, log = r.wait()
    assert status == 0
    skipped = by_event(log, "hook.skipped")
    assert [Path(e["hook"]).name for e in skipped] == ["README.txt"]
    assert "neither executable nor a .sh file" in skipped[0]["reason"]


def test_a_hook_that_starts_again_is_refused(release: Any) -> None:
    r = release(
        {
            "post_start/10-recurse.sh": (
                '"$RPCCTL" start; echo "nested=$?" >> "$RPCCTL_ROOT/events.log"\n'
            )
        }
    )
    r.start()
    r.wait_for_event("nested=")
    r.signal(signal.SIGTERM)
    status, log = r.wait()
    assert r.events() == ["nested=2"]
    assert any(
        "refusing to start sample" in e.get("line", "") for e in by_event(log, "hook.output")
    )
    assert status == 0
    assert len(r.marker()) == 2  # one app, started and stopped once


HANG = "import threading; threading.Event().wait()"  # an app whose agent never starts


def test_never_ready_and_early_exit(release: Any, short_tmp: Path) -> None:
    r = release({}, toml="ready_timeout = 1\n")
    r.config.write_text(
        r.config.read_text().replace(
            "command = [",
            f'command = [{json.dumps(sys.executable)}, "-c", {json.dumps(HANG)}]\n# [',
        )
    )
    status, log = r.start().wait()
    assert status == 3
    assert "did not answer ping" in by_event(log, "runner.never_ready")[0]["reason"]

    r.config.write_text(
        r.config.read_text().replace(
            "import threading; threading.Event().wait()", "raise SystemExit(5)"
        )
    )
    status, log = r.start().wait()
    assert status == 5
    reason = by_event(log, "runner.app_exited_before_ready")[0]["reason"]
    assert reason == "the app exited with status 5 before its agent answered ping"


def test_already_running_is_refused(release: Any) -> None:
    r = release({})
    r.start()
    assert run_rpcctl("-n", r.node, "ping", "--wait", str(DEADLINE)).returncode == 0
    second = r.rpcctl("start")
    assert second.returncode == 2
    assert "sample is already running" in second.stderr
    r.signal(signal.SIGTERM)
    assert r.wait()[0] == 0


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


DEMOAPP_MAIN = """
import os, signal, threading
import app_agent

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
agent = app_agent.start(tasks=["demoapp.tasks"])
stop.wait()
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
    runner = subprocess.Popen(
        [str(launcher), "start"],
        cwd=elsewhere,  # the launcher finds its own root
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        wait_until(lambda: (short_tmp / "migrated").exists(), what="the migrate hook")
        assert (short_tmp / "migrated").read_text() == "head"
        ping = subprocess.run(
            [str(launcher), "ping"], cwd=elsewhere, capture_output=True, text=True, env=_env()
        )
        assert ping.stdout == "pong\n"
        stop = subprocess.run(
            [str(launcher), "stop"], cwd=elsewhere, capture_output=True, text=True, env=_env()
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
