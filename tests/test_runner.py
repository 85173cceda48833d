"""`rpcctl start` and friends with real processes: hooks, signals, policies, stop, restart."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from runner_support import RECORD, by_event

from conftest import APPS, DEADLINE, SAMPLEAPP, run_rpcctl, wait_until


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
