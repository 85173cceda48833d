"""Hardening, second round (issue #20): what a hostile trial of the hardened agent still broke,
each kept fixed by a test.

An impostor in a directory it made before the app started, the runner's lock through a
planted symlink, records and frames that never arrive whole, memory spent before the grant
is checked, slow followers, abandoned profiles, a thread per log-level revert, and the
smaller ones (malformed frames, refusals naming the real task, console audit, arguments
touched before their checks, cookies of another app, cookie files that are not files).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import threading
from pathlib import Path

import pytest

import app_agent
import rpcctl
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from app_agent import wire
from app_agent.exceptions import ConfigurationError
from conftest import (
    DEADLINE,
    NOBODY,
    SAMPLEAPP,
    AppProcess,
    agent_events,
    listed_jobs,
    needs_root,
    open_rpc,
    popen_rpcctl,
    rpcctl_executable,
    run_rpcctl,
    wait_until,
)


def connect_as(app: AppProcess, identity: str) -> rpcctl.Client:
    cookie = Path(app.env["RPCCTL_ACCESS"]).parent / f"{identity}.cookie"
    return rpcctl.connect(app.node, identity=identity, cookie_file=cookie, timeout=DEADLINE)


# -- 9. smaller ones -------------------------------------------------------------------------


def test_malformed_frames_are_one_bounded_event_each_never_a_traceback(short_tmp: Path) -> None:
    """20 admitted connections each send a frame RPyC cannot parse: each ends only its own
    connection, with one structured event, the first 5 of the window one by one and the
    rest counted in a summary; no thread prints a traceback."""
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    path = wire.parse_node(app.node).path
    try:
        for n in range(20):
            with open_rpc(path) as sock:
                garbage = bytes([99]) + n.to_bytes(4, "big")  # message type 99: none of RPyC's
                sock.sendall(struct.pack("!LB", len(garbage), 0) + garbage + b"\n")
                while sock.recv(65536):
                    pass
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
    finally:
        stderr = app.stderr()
        app.close()
    assert "Traceback" not in stderr
    log = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    single = [e for e in log if e["event"] == "connection.malformed"]
    summary = [e for e in log if e["event"] == "connection.malformed_summary"]
    assert len(single) + sum(e["malformed"] for e in summary) == 20
    assert len(single) <= 10  # 5 a 10-second window (the loop above takes well under 20 s)
    assert {e["reason"] for e in single} == {"ValueError: invalid message type: 99"}
    assert all(e["caller"].startswith("uid=0 pid=") and e["auth"] == "peer-uid" for e in single)


# -- 6. flow control waits for the job's own caller only --------------------------------------


def test_flow_control_waits_for_the_caller_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the job's caller (attached before it starts) reads everything; a second
    follower that read once and went quiet (but stays "live") never holds the task."""
    from app_agent._jobs import job as _job
    from app_agent._registry import registry

    monkeypatch.setattr(_job, "FOLLOWER_GRACE", 3600.0)
    job = _job.Job("flow", registry.get("sampleapp.echo"), "test")  # type: ignore[arg-type]
    job.attach(1)
    job.events_since(0, 0, follower=2)  # someone else follows, once
    count = 3 * _job.MAX_EVENTS
    done = threading.Event()

    def task() -> None:
        job.thread = threading.get_ident()
        for i in range(count):
            job.write("stdout", f"{i}\n")
        done.set()

    threading.Thread(target=task, daemon=True).start()
    cursor, lines = 0, []
    while len(lines) < count:
        snapshot = job.events_since(cursor, DEADLINE, follower=1)
        assert snapshot["dropped"] == 0
        assert snapshot["events"], "the task stopped writing: it waits for the quiet follower"
        lines += [e["line"] for e in snapshot["events"]]
        cursor = snapshot["cursor"]
    assert done.wait(DEADLINE)
    assert lines == [str(i) for i in range(count)]
    assert job.events_since(0, 0, follower=2)["dropped"] == count - _job.MAX_EVENTS


def test_a_slow_follower_never_holds_the_job_back(sample_app: AppProcess, short_tmp: Path) -> None:
    """`rpcctl logs -f` of another reader that stops reading (its output pipe full) leaves
    the job at its caller's pace; it is told afterwards how many lines it missed."""
    grace = sample_app.rpcctl("rpc", "sampleapp.set_follower_grace(3600)")  # stays "live"
    assert grace.returncode == 0, grace.stderr
    gate = short_tmp / "gate"
    count = 60_000
    owner = popen_rpcctl(
        "-n", sample_app.node, "rpc", "--json", f'sampleapp.gated_lines("{gate}", {count})'
    )
    owned: list[str] = []
    reader = threading.Thread(target=lambda: owned.append(owner.communicate()[0]), daemon=True)
    slow = None
    try:
        reader.start()
        wait_until(lambda: listed_jobs(sample_app)[0]["task"] == "sampleapp.gated_lines")
        job_id = listed_jobs(sample_app)[0]["id"]
        slow = popen_rpcctl("-n", sample_app.node, "logs", job_id, "-f", "--json")
        assert slow.stdout is not None
        assert json.loads(slow.stdout.readline())["line"] == "ready"  # it follows; no more read
        gate.touch()
        reader.join(DEADLINE * 3)
        assert not reader.is_alive(), "the job waited for the slow follower"
        rest, _err = slow.communicate(timeout=DEADLINE)
    finally:
        for proc in (owner, slow):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert owner.returncode == 0
    *events, envelope = [json.loads(line) for line in owned[0].splitlines()]
    assert envelope == {"ok": True, "result": count}  # the caller missed nothing
    assert len(events) == count + 1
    *followed, summary = [json.loads(line) for line in rest.splitlines()]
    assert summary["result"]["state"] == "succeeded"
    missed = sum(e["count"] for e in followed if e["type"] == "dropped")
    assert missed > 0, "the slow follower was not told what it missed"
    # Every line but "ready" (read above) was shown or counted as missed.
    assert missed + len([e for e in followed if e["type"] == "stdout"]) == count


# -- 7. a profile ends with its client, or when cancelled -------------------------------------


def profiling(app: AppProcess) -> bool:
    """Whether the app's profiler thread runs (asked through `stack`, which starts none)."""
    stack = app.rpcctl("stack", "--json")
    assert stack.returncode == 0, stack.stderr
    threads = json.loads(stack.stdout)["result"]["threads"]
    return any(t["name"] == "rpcctl-profiler" for t in threads)


def test_a_profile_ends_when_its_client_goes_away(sample_app: AppProcess) -> None:
    hour = popen_rpcctl("-n", sample_app.node, "profile", "--seconds", "3600")
    try:
        wait_until(lambda: profiling(sample_app), what="the profile to start")
        hour.kill()
        hour.communicate()
        wait_until(lambda: not profiling(sample_app), what="the abandoned profile to end")
        after = sample_app.rpcctl("profile", "--seconds", "0.05", "--format", "collapsed")
        assert after.returncode == 0, after.stderr  # not "busy"
    finally:
        if hour.poll() is None:
            hour.kill()
            hour.communicate()
    finished = agent_events(sample_app, "profile.finished")
    assert finished[0]["ended"] == "the client went away"


def test_cancel_ends_a_profile(sample_app: AppProcess) -> None:
    hour = popen_rpcctl("-n", sample_app.node, "profile", "--seconds", "3600", "--json")
    try:
        wait_until(lambda: profiling(sample_app), what="the profile to start")
        busy = sample_app.rpcctl("profile", "--seconds", "1").stderr
        profile_id = re.search(r"`rpcctl cancel (profile-\d+)` ends it", busy)
        assert profile_id is not None, busy
        cancelled = sample_app.rpcctl("cancel", profile_id[1])
        assert (cancelled.returncode, cancelled.stdout) == (
            0,
            f"cancellation requested for job {profile_id[1]}\n",
        )
        out, err = hour.communicate(timeout=DEADLINE)
    finally:
        if hour.poll() is None:
            hour.kill()
            hour.communicate()
    assert hour.returncode == 0, err
    result = json.loads(out)["result"]
    assert result["id"] == profile_id[1]
    assert result["ended"].startswith("cancelled by uid=0 pid=")
    assert err.startswith("rpcctl: the profile ended early (cancelled by uid=0 pid=")
    again = sample_app.rpcctl("cancel", profile_id[1])
    assert (again.returncode, again.stderr) == (
        2,
        f"rpcctl: error: no profile '{profile_id[1]}' is running\n",
    )


# -- 8. log levels: one thread for every revert, a bound on them ------------------------------


def test_temporary_log_levels_share_one_thread_and_are_bounded() -> None:
    import logging

    from app_agent._introspection import loglevels as _loglevels

    levels = _loglevels.LogLevels()
    names = [f"rpcctl.test.many.{i}" for i in range(_loglevels.MAX_PENDING)]
    before = threading.active_count()
    reverted: list[str] = []
    try:
        for name in names:
            levels.set(name, logging.DEBUG, 3600)
        assert threading.active_count() - before == 1
        with pytest.raises(_loglevels.LevelError) as refused:
            levels.set("rpcctl.test.many.one_more", logging.DEBUG, 3600)
        assert str(refused.value) == (
            "1000 loggers already have a temporary level: set this one without --for, or wait "
            "for some to come back"
        )
        levels.set(names[0], logging.INFO, 3600)  # one already waiting may change
        levels.set("rpcctl.test.many.one_more", logging.INFO)  # and any, without --for
        levels.reset()
        assert all(logging.getLogger(n).level == logging.NOTSET for n in names)
        # Reverts come in the order they are due, whatever order they were set in.
        levels.set("rpcctl.test.later", logging.DEBUG, 0.4, lambda n, *_: reverted.append(n))
        levels.set("rpcctl.test.sooner", logging.DEBUG, 0.1, lambda n, *_: reverted.append(n))
        wait_until(lambda: len(reverted) == 2, what="both reverts")
        assert reverted == ["rpcctl.test.sooner", "rpcctl.test.later"]
        wait_until(lambda: threading.active_count() == before, what="the thread to end")
    finally:
        levels.reset()
        for name in [*names, "rpcctl.test.many.one_more"]:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_log_level_for_many_loggers_costs_one_thread(sample_app: AppProcess) -> None:
    with rpcctl.connect(sample_app.node) as app:
        before = app.stats()["threads"]["python"]
        for i in range(300):
            app.log_level("DEBUG", f"sampleapp.many.{i}", 600)
        after = app.stats()["threads"]["python"]
    assert after - before == 1


def test_console_audit_lines_name_the_identity(short_tmp: Path) -> None:
    for name in ("ops", "access"):
        path = short_tmp / (f"{name}.cookie" if name != "access" else "access.toml")
        path.write_text(
            '[identity.ops]\ncookie_file = "ops.cookie"\nallow = ["console"]\n'
            if name == "access"
            else "ops-cookie-0123456789abcdef\n"
        )
        path.chmod(0o600)
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"RPCCTL_ACCESS": str(short_tmp / "access.toml"), "RPCCTL_CONSOLE": "1"},
    )
    try:
        with rpcctl.connect(app.node, identity="ops", cookie_file=short_tmp / "ops.cookie") as c:
            c.console_open()
            c.console_push("1 + 1", 5.0)
            c.console_close()
    finally:
        log = agent_events(app)
        app.close()
    console = [e for e in log if e["event"].startswith("console.")]
    assert [e["event"] for e in console] == [
        "console.opened",
        "console.statement",
        "console.statement_finished",
        "console.closed",
    ]
    assert {e["identity"] for e in console} == {"ops"}


def test_exposed_methods_check_argument_types_before_touching_them(short_tmp: Path) -> None:
    """A caller's object reaches the agent as a netref; comparing or hashing it (say,
    `value in (...)`, as log_level() did) would call back into the caller. Every exposed
    method refuses one by its type alone, in each of its arguments."""
    import inspect

    import rpyc

    from app_agent._service import AgentService

    touched: list[str] = []

    class Prying(str):  # a str subclass: RPyC sends it by reference, as a netref
        def __eq__(self, other: object) -> bool:
            touched.append("__eq__")
            return False

        def __hash__(self) -> int:
            touched.append("__hash__")
            return 0

    methods = {
        name.removeprefix("exposed_"): len(inspect.signature(method).parameters) - 1
        for name, method in inspect.getmembers(AgentService, inspect.isfunction)
        if name.startswith("exposed_")
    }
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    replies = {}
    try:
        sock = open_rpc(wire.parse_node(app.node).path)
        conn = rpyc.connect_stream(
            rpyc.SocketStream(sock), config={"allow_all_attrs": True, "allow_pickle": False}
        )
        try:
            for name, arity in methods.items():
                for slot in range(arity):
                    args = [None] * arity
                    args[slot] = Prying("x")
                    replies[name, slot] = json.loads(getattr(conn.root, name)(*args))
        finally:
            conn.close()
    finally:
        app.close()
    assert touched == []
    assert {"log_level", "call", "run", "events", "cancel", "profile"} <= {n for n, _ in replies}
    assert {key: r["error"]["kind"] for key, r in replies.items() if r["ok"]} == {}
    # Refused by the table's declaration of its arguments, before anything touches them.
    assert replies["log_level", 0]["error"]["message"] == (
        "log_level() takes logger: str|none = None, level: str|int|none = None, "
        "for_s: float|none = None"
    )
    assert {r["error"]["reason"] for r in replies.values()} == {"bad_arguments"}


def test_a_cookie_exported_for_another_app_does_not_break_start(short_tmp: Path) -> None:
    """`bin/APP start` with RPCCTL_COOKIE exported (for another app): the release's own
    cookie file reaches its app and hooks, and the ambient cookie does not."""
    from runner_support import Release, _env

    cookie = short_tmp / "cookie"
    cookie.write_text("this-releases-cookie-0123456789\n")
    cookie.chmod(0o600)
    r = Release(
        short_tmp,
        {"post_start/10.sh": '"$RPCCTL" rpc \'add(20, 22)\' > "$RPCCTL_ROOT/answer"\n'},
        toml="",
    )
    r.config.write_text(
        r.config.read_text().replace(
            "[app]\n", '[app]\ncookie_file = "cookie"\nready_timeout = 10\n'
        )
    )
    r.proc = subprocess.Popen(
        [rpcctl_executable(), "--config", str(r.config), "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(), "RPCCTL_COOKIE": "another-apps-cookie-0123456789"},
    )
    try:
        answer = short_tmp / "answer"
        wait_until(lambda: answer.exists() and answer.read_text(), what="the post_start hook")
        assert answer.read_text() == "42\n"
        r.signal(15)
        assert r.wait()[0] == 0
    finally:
        r.close()


@pytest.mark.parametrize("kind", ["a FIFO", "a directory"])
def test_a_cookie_file_that_is_not_a_file_is_refused_at_once(short_tmp: Path, kind: str) -> None:
    path = short_tmp / "cookie"
    if kind == "a FIFO":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    expected = f"cookie file {path} is not a regular file ({kind})"
    with pytest.raises(ConfigurationError) as refused:
        app_agent.start(node=f"unix:{short_tmp}/a.sock", cookie_file=path)
    assert str(refused.value) == expected
    result = run_rpcctl(
        "-n", f"unix:{short_tmp}/a.sock", "--cookie-file", str(path), "ping", timeout=DEADLINE
    )
    assert (result.returncode, result.stderr) == (2, f"rpcctl: error: {expected}\n")


@needs_root
def test_secret_files_of_another_user_are_refused_by_the_agent(short_tmp: Path) -> None:
    cookie = short_tmp / "cookie"
    cookie.write_text("someone-elses-cookie-0123456789\n")
    cookie.chmod(0o600)
    os.chown(cookie, NOBODY, NOBODY)
    who = f"belongs to uid {NOBODY} (nobody), who could change it, not to this process's user"
    with pytest.raises(ConfigurationError) as refused:
        app_agent.start(node=f"unix:{short_tmp}/a.sock", cookie_file=cookie)
    assert (
        str(refused.value) == f"cookie file {cookie} {who} (uid 0); fix it with: chown 0 {cookie}"
    )
    access = short_tmp / "access.toml"
    access.write_text('[identity.ops]\nunix_user = "root"\nallow = ["read"]\n')
    access.chmod(0o600)
    os.chown(access, NOBODY, NOBODY)
    with pytest.raises(ConfigurationError, match=re.escape(f"access file {access} {who}")):
        app_agent.start(node=f"unix:{short_tmp}/a.sock", access=access)
    # The client may read the app user's cookie (root operating an app of its own user).
    result = run_rpcctl("-n", f"unix:{short_tmp}/a.sock", "--cookie-file", str(cookie), "ping")
    assert result.returncode == 3, result.stderr  # read, then: no agent there
