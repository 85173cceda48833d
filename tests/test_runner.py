"""`rpcctl start` and friends with real processes: hooks, signals, policies, stop, restart."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

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
    assert log[-1]["event"] == "runner.stopped"
    assert (log[-1]["level"], log[-1]["status"], log[-1]["reason"]) == (
        "error",
        1,
        "pre_start hook pre_start/10-check.sh exited with status 3; the app was not started",
    )
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
    # The last line says the release failed, not a plain "stopped, status 0".
    assert log[-1]["event"] == "runner.stopped"
    assert (log[-1]["level"], log[-1]["status"], log[-1]["reason"]) == (
        "error",
        1,
        "post_start hook post_start/10-migrate.sh exited with status 9; the app was stopped",
    )


def test_a_failing_hooks_traceback_is_one_event(release: Any) -> None:
    r = release(
        {
            "post_start/10-migrate.sh": (
                'echo migrating\n"$RPCCTL" rpc \'sampleapp.boom("bad migration")\' || exit $?\n'
            )
        }
    )
    status, log = r.start().wait()
    assert status == 1
    (traceback,) = by_event(log, "hook.traceback")
    assert traceback["hook"] == "post_start/10-migrate.sh"
    text = traceback["exception"]
    assert text.startswith("Traceback (most recent call last):\n")
    assert "in boom\n    raise ValueError(message)\n" in text
    assert text.endswith("\nValueError: bad migration")
    # The rest of the output stays line by line; none of the traceback's lines is among it,
    # and no event carries the traceback a second time.
    lines = [e["line"] for e in by_event(log, "hook.output")]
    assert lines == [
        "migrating",
        "rpcctl: error: sampleapp.boom raised ValueError: bad migration",
    ]
    assert sum("raise ValueError(message)" in json.dumps(e) for e in log) == 1
    assert log[-1]["event"] == "runner.stopped"
    assert (log[-1]["status"], log[-1]["reason"]) == (
        1,
        "post_start hook post_start/10-migrate.sh exited with status 1; the app was stopped",
    )


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
    assert log[-1]["reason"] == (
        "pre_start hook pre_start/10-hang.sh was killed after its timeout; the app was not started"
    )


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
    assert log[-1]["event"] == "runner.stopped"
    assert log[-1]["reason"].endswith(f"the runner sets RPCCTL_NODE={r.node}); the app was stopped")

    r.config.write_text(
        r.config.read_text().replace(
            "import threading; threading.Event().wait()", "raise SystemExit(5)"
        )
    )
    status, log = r.start().wait()
    assert status == 5
    reason = by_event(log, "runner.app_exited_before_ready")[0]["reason"]
    assert reason == "the app exited with status 5 before its agent answered ping"


def test_an_app_running_without_a_runner_is_refused(release: Any) -> None:
    from conftest import AppProcess

    r = release({"pre_start/10.sh": RECORD})
    app = AppProcess(SAMPLEAPP, node=r.node)  # started by hand, not by `rpcctl start`
    try:
        second = r.rpcctl("start")
        assert second.returncode == 2
        assert second.stderr == (
            f"rpcctl: error: sample is already running: an agent answers at {r.node}\n"
        )
        assert r.events() == []  # no hook ran
    finally:
        app.close()


def test_two_starts_at_once_run_the_release_once(release: Any) -> None:
    r = release(
        {
            # The winner waits in pre_start (holding the release's lock) until the test lets
            # it go, so both runners are alive at the same time.
            "pre_start/10-gate.sh": RECORD
            + 'while [ ! -e "$RPCCTL_ROOT/gate" ]; do sleep 0.01; done\n',
            "post_start/10-migrate.sh": RECORD,
        }
    )
    runners = [r.spawn(), r.spawn()]
    try:
        wait_until(
            lambda: (
                any(p.poll() is not None for p in runners)
                or len([e for e in r.events() if e.startswith("pre_start")]) >= 2
            ),
            what="one runner to give up",
        )
        (r.root / "gate").touch()
        ended = [p for p in runners if p.poll() is not None]
        assert len(ended) == 1, "both runners ran pre_start"
        (loser,) = ended
        (winner,) = [p for p in runners if p is not loser]
        _out, err = loser.communicate()
        assert loser.returncode == 2
        assert err.startswith(
            "rpcctl: error: sample is already being run by `rpcctl start` "
            f"(runner pid {winner.pid} holds {r.root}/run/app.sock.lock)"
        )
        assert err.count("\n") == 1
        r.proc = winner
        r.wait_for_event("post_start")
        r.signal(signal.SIGTERM)
        status, _log = r.wait()
        assert status == 0
        assert [e.split()[0] for e in r.events()] == ["pre_start", "post_start"]
        assert [line.split()[0] for line in r.marker()] == ["started", "stopped"]
    finally:
        for p in runners:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_held_lock_names_its_holder(release: Any) -> None:
    import fcntl

    r = release({"pre_start/10.sh": RECORD})
    lock = r.root / "run" / "app.sock.lock"
    lock.parent.mkdir(mode=0o700)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        refused = r.rpcctl("start")
    assert refused.returncode == 2
    assert refused.stderr == (
        "rpcctl: error: sample is already being run by `rpcctl start` "
        f"(runner pid {os.getpid()} holds {lock})\n"
    )
    assert r.events() == []
    # Released (here: by closing it), the lock no longer stands in the way.
    r.start()
    r.wait_for_event("pre_start")
    r.signal(signal.SIGTERM)
    assert r.wait()[0] == 0
    assert r.proc is not None
    # The holder's pid, for the next refusal (padded: a lock file is never truncated).
    assert lock.read_text().split() == [str(r.proc.pid)]


def test_a_lock_that_cannot_be_made_is_a_usage_error(release: Any) -> None:
    r = release({})
    r.config.write_text(r.config.read_text().replace("unix:run/app.sock", "unix:blocker/app.sock"))
    (r.root / "blocker").write_text("a file where the socket's directory should be")
    result = r.rpcctl("start")
    assert result.returncode == 2
    assert result.stderr == (
        f"rpcctl: error: cannot open the release lock {r.root}/blocker/app.sock.lock: File exists\n"
    )


def test_lock_paths(short_tmp: Path) -> None:
    from rpcctl.release import config
    from rpcctl.release.lock import lock_path

    toml = short_tmp / "rpcctl.toml"
    toml.write_text('[app]\nname = "web"\ncommand = ["web"]\nnode = "unix:run/web.sock"\n')
    assert lock_path(config.load(toml)) == short_tmp / "run" / "web.sock.lock"
    toml.write_text('[app]\nname = "web"\ncommand = ["web"]\nnode = "tcp://127.0.0.1:7000"\n')
    assert lock_path(config.load(toml)) == short_tmp / ".rpcctl-web.lock"


def test_the_release_lock_is_held_once_and_names_its_holder(short_tmp: Path) -> None:
    from rpcctl.exceptions import UsageError
    from rpcctl.release import config, lock

    toml = short_tmp / "rpcctl.toml"
    toml.write_text('[app]\nname = "web"\ncommand = ["web"]\nnode = "unix:run/web.sock"\n')
    release = config.load(toml)
    path = lock.lock_path(release)
    with lock.held(release):
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(UsageError) as refused, lock.held(release):
            pass
        assert str(refused.value) == (
            f"web is already being run by `rpcctl start` (runner pid {os.getpid()} holds {path})"
        )
    with lock.held(release):  # released with the first holder
        pass


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_the_app_is_stopped_with_sigterm_then_sigkill(
    short_tmp: Path, ignores_sigterm: bool
) -> None:
    from structlog.testing import capture_logs

    from rpcctl.release import config
    from rpcctl.release.app import App

    ready = short_tmp / "ready"
    code = (
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGTERM, signal.{'SIG_IGN' if ignores_sigterm else 'SIG_DFL'})\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(3600)\n"
    )
    toml = short_tmp / "rpcctl.toml"
    toml.write_text(
        f'[app]\nname = "web"\ncommand = ["python", "-c", {json.dumps(code)}]\n'
        f'node = "unix:run/web.sock"\nstop_timeout = 0.2\n'
    )
    with capture_logs() as logs:
        app = App(config.load(toml), structlog.get_logger())
        assert (app.pid, app.running(), app.exited()) == (None, False, False)
        app.spawn(dict(os.environ))
        wait_until(ready.exists, what="the app to set its SIGTERM handling")
        assert app.running()
        clean = app.terminate()
    assert clean is not ignores_sigterm
    assert app.exited()
    assert app.status() == (128 + 9 if ignores_sigterm else 128 + 15)
    killed = " (killed: it outlived SIGTERM by 0.2s)"
    assert app.killed(clean) == (killed if ignores_sigterm else "")
    events = [e["event"] for e in logs]
    stopped = "runner.killing" if ignores_sigterm else "runner.app_stopped"
    assert events == ["runner.app_started", "runner.terminating", stopped]
    assert all(e["pid"] == app.pid for e in logs)


def test_another_app_answering_is_not_taken_for_ours(release: Any) -> None:
    sampleapp = f"{json.dumps(sys.executable)} {json.dumps(str(APPS / 'sampleapp.py'))}"
    r = release(
        {
            # Another app takes the node after the runner's "already running" check.
            "pre_start/10-squat.sh": (
                f"SAMPLEAPP_AGENT_DELAY=0 {sampleapp} >/dev/null 2>&1 &\n"
                f'"$RPCCTL" ping --wait {DEADLINE} >/dev/null\n'
            ),
            "post_start/10.sh": RECORD,
            "pre_stop/10.sh": RECORD,
            "post_stop/10.sh": RECORD,
        },
        # This release's own app is slow to start its agent: the other one answers first.
        env={"SAMPLEAPP_AGENT_DELAY": "600"},
    )
    status, log = r.start().wait()
    assert status == 2
    ours = by_event(log, "runner.app_started")[0]["pid"]
    (other,) = [int(line.split()[1]) for line in r.marker() if int(line.split()[1]) != ours]
    assert r.events() == []  # no hook acted on the other app
    assert log[-1]["event"] == "runner.stopped"
    assert log[-1]["reason"] == (
        f"another app answers at {r.node}: its agent is pid {other}, not this runner's app "
        f"(pid {ours}) nor a process it started; this app was stopped and no more hooks ran"
    )
    assert by_event(log, "runner.terminating")[0]["pid"] == ours
    assert run_rpcctl("-n", r.node, "ping").returncode == 0  # the other app is left alone


def test_an_agent_in_a_child_of_the_app_counts_as_ours(short_tmp: Path) -> None:
    from rpcctl.release import config
    from rpcctl.release.app import App, parent_pid

    toml = short_tmp / "rpcctl.toml"
    toml.write_text('[app]\nname = "web"\ncommand = ["web"]\n')
    app = App(config.load(toml), structlog.get_logger())
    pidfile = short_tmp / "inner.pid"
    inner = (
        f"import os, signal; open({str(pidfile)!r}, 'w').write(str(os.getpid())); signal.pause()"
    )
    # `; :` keeps sh from exec'ing python: python is the app's child, as in a forking app.
    app.proc = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c {shlex.quote(inner)}; :"], process_group=0
    )
    try:
        wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="the inner process")
        grandchild = int(pidfile.read_text())
        assert parent_pid(grandchild) == app.proc.pid
        assert app.is_ours(app.proc.pid)
        assert app.is_ours(grandchild)
        assert not app.is_ours(os.getpid())
        assert parent_pid(2**22 + 1) is None  # beyond any pid: no such process
    finally:
        os.killpg(app.proc.pid, signal.SIGKILL)
        app.proc.wait()


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
