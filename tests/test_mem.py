"""`rpcctl mem`: tracemalloc inside the live app, against real agent processes
(tests/apps/memapp.py) through the real rpcctl executable, plus the pieces in-process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rpcctl
from app_agent._introspection import mem as _mem
from app_agent.wire.protocol import METHODS
from conftest import (
    APPS,
    DEADLINE,
    EXIT_CODES,
    AppProcess,
    popen_rpcctl,
    run_rpcctl,
    wait_until,
)
from rpcctl import _introspect_render as render
from rpcctl.exceptions import UsageError

MEMAPP = [sys.executable, str(APPS / "memapp.py")]
SOURCE = (APPS / "memapp.py").read_text().splitlines()


def line_of(marker: str) -> int:
    """The line of memapp.py that holds *marker*."""
    return next(n for n, text in enumerate(SOURCE, 1) if marker in text)


LEAK_LINE = line_of("# the planted leak")
JSON_LINE = line_of("# allocated inside json")
CHURN_LINE = line_of("# allocated and freed at once")


def start_memapp(directory: Path, name: str = "mem", **env: str) -> AppProcess:
    return AppProcess(MEMAPP, node=f"unix:{directory}/{name}.sock", env=env)


@pytest.fixture
def app(short_tmp: Path) -> Iterator[AppProcess]:
    process = start_memapp(short_tmp)
    try:
        yield process
    finally:
        process.close()


def call(app: AppProcess, task: str, *args: Any) -> Any:
    with rpcctl.connect(app.node) as conn:
        return conn.call(task, *args)


def tracing(app: AppProcess) -> dict[str, Any]:
    found: dict[str, Any] = call(app, "memapp.tracing")
    return found


def mem_json(app: AppProcess, *args: str) -> dict[str, Any]:
    result = app.rpcctl("mem", "--json", *args)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    found: dict[str, Any] = document["result"]
    return found


def memapp_entries(result: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(Path(e["file"]).name, e["line"]) for e in result["top"]]


def agent_events(app: AppProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]


def background_mem(app: AppProcess, *args: str) -> subprocess.Popen[str]:
    """A long `rpcctl mem` in the background, once the app traces for it."""
    proc = popen_rpcctl("-n", app.node, "mem", "--seconds", "600", *args)
    wait_until(lambda: tracing(app)["tracing"], what="the first mem to start tracing")
    return proc


# -- what it finds -------------------------------------------------------------------------------


def test_a_planted_leak_is_in_the_first_three_after_3_seconds(app: AppProcess) -> None:
    call(app, "memapp.start_leak", "bytes")  # ~3 MB/s, and as much churn freed at once
    result = mem_json(app, "--seconds", "3")
    assert ("memapp.py", LEAK_LINE) in memapp_entries(result)[:3], result["top"]
    leak = next(e for e in result["top"] if e["line"] == LEAK_LINE)
    assert leak["size_diff"] > 0
    assert leak["count_diff"] > 0
    assert leak["code"] == "_leaked.append(bytes(CHUNK))  # the planted leak"
    assert leak["via"] is None  # allocated by the app's own line
    assert ("memapp.py", CHURN_LINE) not in memapp_entries(result)
    assert result["tracing"] == {"already": False, "frames": _mem.FRAMES["line"], "left_on": False}
    # Tracing stopped after, and its traces are freed.
    after = tracing(app)
    assert after["tracing"] is False
    assert after["tracemalloc_bytes"] < result["overhead"]["tracemalloc_bytes"]


def test_the_json_shape(app: AppProcess) -> None:
    call(app, "memapp.start_leak", "bytes")
    result = mem_json(app, "--seconds", "1", "--top", "2")
    assert {"top", "seconds", "overhead", "tracing", "grew", "group_by"} <= result.keys()
    assert 0 < len(result["top"]) <= 2
    assert result["group_by"] == "line"
    assert result["seconds"] >= 1.0
    for entry in result["top"]:
        assert {"file", "line", "size_diff", "count_diff", "traceback"} <= entry.keys()
        assert type(entry["size_diff"]) is int
        assert entry["size_diff"] > 0
        assert type(entry["count_diff"]) is int
        assert entry["traceback"], entry
        assert all({"file", "line"} <= frame.keys() for frame in entry["traceback"])
    overhead = result["overhead"]
    assert overhead["tracemalloc_bytes"] > 0
    assert overhead["rss_during_bytes"] > 0
    assert overhead["snapshots_s"] >= 0


def test_the_human_output_names_the_apps_line_first(app: AppProcess) -> None:
    call(app, "memapp.start_leak", "json")
    result = app.rpcctl("mem", "--seconds", "1", "--top", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"\d+ allocation sites? grew in [\d.]+ s \([+-][\d.]+ (B|KiB|MiB), [+-][\d,]+ blocks "
        r"in all\); (the top 3 by size, )?grouped by line",
        lines[0],
    )
    # json.loads allocated the bytes; the site is the app's line that called it.
    assert any(
        line.endswith(f"memapp.py:{JSON_LINE} (via json/decoder.py:353)") for line in lines
    ), result.stdout
    assert lines[-1].startswith("tracing: started for this run with 8 frames and stopped after;")


def test_group_by_file_and_traceback(app: AppProcess) -> None:
    call(app, "memapp.start_leak", "json")
    by_file = mem_json(app, "--seconds", "1", "--group-by", "file")
    files = [(Path(e["file"]).name, e["line"]) for e in by_file["top"]]
    assert ("memapp.py", None) in files
    assert len(files) == len(set(files))
    by_traceback = mem_json(app, "--seconds", "1", "--group-by", "traceback")
    assert by_traceback["tracing"]["frames"] == _mem.FRAMES["traceback"]
    entry = next(e for e in by_traceback["top"] if e["line"] == JSON_LINE)
    shorts = [f["short"] for f in entry["traceback"]]
    # Outermost first: the thread's start, the leak loop, the app's line, then inside json.
    assert shorts[0] == "threading.py"
    assert shorts[-1] == "json/decoder.py"
    assert "memapp.py" in shorts
    assert entry["via"]["short"] == "json/decoder.py"


def test_an_app_that_already_traces_is_compared_and_left_tracing(short_tmp: Path) -> None:
    traced = start_memapp(short_tmp, PYTHONTRACEMALLOC="1")
    try:
        call(traced, "memapp.start_leak", "bytes")
        result = mem_json(traced, "--seconds", "2")
        assert result["tracing"] == {"already": True, "frames": 1, "left_on": True}
        assert ("memapp.py", LEAK_LINE) in memapp_entries(result)[:3], result["top"]
        still = tracing(traced)
        assert (still["tracing"], still["frames"]) == (True, 1)
        human = traced.rpcctl("mem", "--seconds", "0.2")
        assert human.returncode == 0, human.stderr
        assert human.stdout.splitlines()[-1].startswith(
            "tracing: the app was already tracing (PYTHONTRACEMALLOC or its own "
            "tracemalloc.start(), 1 frame): its traces were compared and tracing left on;"
        )
        assert tracing(traced)["tracing"] is True
    finally:
        traced.close()


# -- one at a time, and never left on -----------------------------------------------------------


def test_a_second_mem_exits_7_and_a_client_that_goes_away_stops_tracing(
    app: AppProcess,
) -> None:
    first = background_mem(app)
    try:
        second = app.rpcctl("mem", "--seconds", "1")
        assert second.returncode == EXIT_CODES["busy"]
        assert re.fullmatch(
            r"rpcctl: error: a memory diagnosis is already running \(asked by uid=\d+ "
            r"pid=\d+ \d+s ago, \d+s left\); one at a time\n",
            second.stderr,
        )
    finally:
        first.kill()  # gone without a word: no Ctrl-C, no close
        first.communicate()
    wait_until(lambda: not tracing(app)["tracing"], what="tracing to stop with its client")
    assert mem_json(app, "--seconds", "0.1")["tracing"]["already"] is False  # free again
    abandoned = [e for e in agent_events(app) if e["event"] == "mem.abandoned"]
    assert len(abandoned) == 1
    assert abandoned[0]["caller"].startswith("uid=")


def test_ctrl_c_stops_tracing_in_the_app(app: AppProcess) -> None:
    waiting = background_mem(app)
    waiting.send_signal(signal.SIGINT)
    _out, err = waiting.communicate(timeout=DEADLINE)
    assert waiting.returncode == EXIT_CODES["interrupted"]
    assert err == "rpcctl: interrupted\n"
    wait_until(lambda: not tracing(app)["tracing"], what="tracing to stop after Ctrl-C")


def test_a_child_forked_while_tracing_does_not_trace(app: AppProcess) -> None:
    first = background_mem(app)
    try:
        assert call(app, "memapp.tracing_in_a_child") is False
        assert tracing(app)["tracing"] is True  # the parent's diagnosis goes on
    finally:
        first.kill()
        first.communicate()


def test_the_app_stopping_tracemalloc_itself_fails_the_diagnosis(app: AppProcess) -> None:
    running = popen_rpcctl("-n", app.node, "mem", "--seconds", "6")
    wait_until(lambda: tracing(app)["tracing"], what="mem to start tracing")
    assert call(app, "memapp.stop_tracing") is False
    _out, err = running.communicate(timeout=DEADLINE)
    assert (running.returncode, err) == (
        EXIT_CODES["task_failed"],
        "rpcctl: error: the app stopped tracemalloc itself while the diagnosis ran\n",
    )
    assert mem_json(app, "--seconds", "0.1")["tracing"]["already"] is False  # free again


def test_stopping_the_agent_stops_tracing(agent_in_process: Any) -> None:
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            with rpcctl.connect(agent_in_process.node) as conn:
                conn.mem(600.0)
        except rpcctl.RpcctlError as exc:
            outcome.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    wait_until(lambda: _mem._active is not None, what="mem to start in this process")
    assert tracemalloc.is_tracing()
    agent_in_process.stop()
    asking.join(DEADLINE)
    assert not asking.is_alive()
    wait_until(lambda: _mem._active is None, what="the diagnosis to end with the agent")
    assert not tracemalloc.is_tracing()
    assert len(outcome) == 1  # the client was told, not left waiting


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "0"], "Invalid value for '--seconds': 0.0 is not in the range 0<x<=3600."),
        (["--seconds", "-5"], "Invalid value for '--seconds': -5.0 is not in the range 0<x<=3600."),
        (
            ["--seconds", "1e9"],
            "Invalid value for '--seconds': 1000000000.0 is not in the range 0<x<=3600.",
        ),
        (["--seconds", "nan"], "Invalid value for '--seconds': nan is not a number of seconds"),
        (
            ["--seconds", "soon"],
            "Invalid value for '--seconds': 'soon' is not a valid float range.",
        ),
        (["--top", "0"], "Invalid value for '--top': 0 is not in the range 1<=x<=1000."),
        (["--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>0."),
        (["--top", "5000"], "Invalid value for '--top': 5000 is not in the range 1<=x<=1000."),
        (
            ["--group-by", "function"],
            "Invalid value for '--group-by': 'function' is not one of 'line', 'file', 'traceback'.",
        ),
    ],
)
def test_bad_options_exit_2_before_connecting(
    short_tmp: Path, args: list[str], message: str
) -> None:
    # The node does not exist: exit 2, not 3, shows nothing was tried.
    result = run_rpcctl("-n", f"unix:{short_tmp}/none.sock", "mem", *args)
    assert result.returncode == EXIT_CODES["usage"]
    assert result.stderr.splitlines()[-1] == f"Error: {message}"


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 10, "line"),
        (-1.0, 10, "line"),
        (float("inf"), 10, "line"),
        (float("nan"), 10, "line"),
        (True, 10, "line"),
        ("10", 10, "line"),
        (1.0, 0, "line"),
        (1.0, 1.5, "line"),
        (1.0, True, "line"),
        (1.0, 10, "function"),
        (1.0, 10, 3),
    ],
)
def test_the_agent_refuses_bad_arguments(agent_in_process: Any, args: tuple[Any, ...]) -> None:
    with rpcctl.connect(agent_in_process.node) as conn, pytest.raises(UsageError) as refused:
        conn._connection.reply(conn._connection.request("mem", 5.0, *args))
    assert refused.value.reason == "bad_arguments"
    try:
        METHODS["mem"].bind(args, {})
    except ValueError:  # not the declared types: refused by the table, before the handler
        assert refused.value.message == (
            "mem() takes seconds: float = 10.0, top: int = 10, group_by: str = 'line'"
        )
    else:  # the types fit, the values do not: the handler's own words
        assert refused.value.message == (
            "mem() takes seconds (at most 3600), a number of sites (1 to 1000) and a grouping "
            "(line, file or traceback)"
        )
    assert _mem._active is None


# -- fleets, grants, audit, the launcher -------------------------------------------------------


def test_mem_on_a_fleet(app: AppProcess, short_tmp: Path) -> None:
    other = start_memapp(short_tmp, "other")
    try:
        call(other, "memapp.start_leak", "bytes")
        result = run_rpcctl("-n", app.node, "-n", other.node, "mem", "--seconds", "1", "--json")
        assert result.returncode == 0, result.stderr
        documents = [json.loads(line) for line in result.stdout.splitlines()]
        by_node = {d["node"]: d for d in documents if "node" in d}
        assert set(by_node) == {app.node, other.node}
        assert all(d["ok"] for d in by_node.values())
        leaking = by_node[other.node]["result"]
        assert ("memapp.py", LEAK_LINE) in memapp_entries(leaking)[:3]
        dead = f"unix:{short_tmp}/dead.sock"
        table = run_rpcctl("-n", other.node, "-n", dead, "mem", "--seconds", "0.5")
        assert table.returncode == EXIT_CODES["unreachable"]
        assert f"=== {other.node}\n" in table.stdout
        assert f"=== {dead}\nunreachable: " in table.stdout
        assert table.stdout.splitlines()[-1].startswith("1/2 nodes ok in ")
        assert not tracing(app)["tracing"]
        assert not tracing(other)["tracing"]
    finally:
        other.close()


ACCESS = """\
[identity.oncall]
cookie_file = "oncall.cookie"
allow = ["read", "memapp.tracing"]

[identity.probe]
cookie_file = "probe.cookie"
allow = ["memapp.tracing"]
"""


def test_mem_needs_the_read_grant(short_tmp: Path) -> None:
    for name in ("oncall", "probe"):
        cookie = short_tmp / f"{name}.cookie"
        cookie.write_text(f"{name}-cookie-0123456789abcdef\n")
        cookie.chmod(0o600)
    access = short_tmp / "access.toml"
    access.write_text(textwrap.dedent(ACCESS))
    access.chmod(0o600)
    guarded = start_memapp(short_tmp, RPCCTL_ACCESS=str(access))
    try:

        def as_identity(name: str, *args: str) -> subprocess.CompletedProcess[str]:
            return guarded.rpcctl(
                "--identity", name, "--cookie-file", str(short_tmp / f"{name}.cookie"), *args
            )

        refused = as_identity("probe", "mem", "--seconds", "0.1")
        assert (refused.returncode, refused.stderr) == (
            EXIT_CODES["auth"],
            "rpcctl: error: probe may not diagnose memory (that needs the read grant)\n",
        )
        assert as_identity("probe", "rpc", "memapp.tracing", "--json").returncode == 0
        granted = as_identity("oncall", "mem", "--seconds", "0.1", "--json")
        assert granted.returncode == 0, granted.stderr
        checked = as_identity("oncall", "rpc", "memapp.tracing", "--json")
        assert json.loads(checked.stdout.splitlines()[-1])["result"]["tracing"] is False
        events = agent_events(guarded)
    finally:
        guarded.close()
    denied = [e for e in events if e["event"] == "access.denied"]
    assert [(e["identity"], e["grant"], e["action"]) for e in denied] == [
        ("probe", "read", "diagnose memory")
    ]
    started = [e for e in events if e["event"] == "mem.started"]
    assert [(e["identity"], e["seconds"], e["group_by"]) for e in started] == [
        ("oncall", 0.1, "line")
    ]


def test_mem_is_audited(app: AppProcess) -> None:
    assert app.rpcctl("mem", "--seconds", "0.1", "--top", "3").returncode == 0
    events = agent_events(app)
    started = next(e for e in events if e["event"] == "mem.started")
    finished = next(e for e in events if e["event"] == "mem.finished")
    assert (started["seconds"], started["top"], started["group_by"]) == (0.1, 3, "line")
    assert started["caller"].startswith("uid=")
    assert finished["caller"] == started["caller"]
    assert finished["tracing_left_on"] is False
    assert type(finished["grew"]) is int


def test_mem_through_the_launcher(short_tmp: Path) -> None:
    from test_cli_launcher import Release

    release = Release(short_tmp)
    release.start_app()
    try:
        result = release.launch("mem", "--seconds", "0.2", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"]["group_by"] == "line"
        usage = release.launch("mem", "--top", "0")
        assert usage.returncode == EXIT_CODES["usage"]
        assert usage.stderr.splitlines()[-1] == (
            "Error: Invalid value for '--top': 0 is not in the range 1<=x<=1000."
        )
    finally:
        assert release.app is not None
        release.app.close()


# -- in-process pieces ---------------------------------------------------------------------------


def test_the_site_is_the_innermost_frame_of_the_apps_code() -> None:
    stdlib = _mem._STDLIB[0]
    app_file = "/srv/app/models.py"
    package = "/venv/lib/python3.11/site-packages/sqlalchemy/orm.py"
    agent = _mem._AGENT[0] + "_jobs.py"
    frames = (
        (stdlib + "threading.py", 1),
        (agent, 2),
        (app_file, 3),
        (package, 4),
        (stdlib + "json/decoder.py", 5),
    )
    assert _mem.site(frames) == 2  # the app's line, past the package and the stdlib
    assert _mem.site(frames[:2] + frames[3:]) == 2  # no app frame: the package's
    assert _mem.site(frames[:2]) == 1  # neither: the innermost
    assert _mem.site(((app_file, 9),)) == 0
    assert [_mem.rank(f) for f, _ in frames] == [2, 2, 0, 1, 2]
    assert _mem.rank("<frozen importlib._bootstrap>") == 2


def test_compare_keeps_what_grew_largest_first() -> None:
    def group(size: int, count: int, line: int) -> Any:
        made = _mem._Group((("/srv/app/a.py", line),), 0)
        made.size, made.count = size, count
        return made

    before = {("/srv/app/a.py", 1): group(100, 1, 1), ("/srv/app/a.py", 2): group(50, 5, 2)}
    after = {
        ("/srv/app/a.py", 1): group(90, 1, 1),  # shrank
        ("/srv/app/a.py", 2): group(5050, 6, 2),  # grew
        ("/srv/app/a.py", 3): group(700, 7, 3),  # new
    }
    found, total = _mem.compare(before, after, "line", 10)
    assert [(e["line"], e["size_diff"], e["count_diff"]) for e in found] == [
        (2, 5000, 1),
        (3, 700, 7),
    ]
    assert total == {"size_diff": 5690, "count_diff": 8, "grew": 2}
    assert _mem.compare(before, after, "line", 1)[0][0]["line"] == 2


def test_signed_sizes() -> None:
    assert render.signed_size(512) == "+512 B"
    assert render.signed_size(-2048) == "-2.0 KiB"
    assert render.signed_size(9 << 20) == "+9.0 MiB"
    assert render.signed_size(3 << 30) == "+3.0 GiB"
