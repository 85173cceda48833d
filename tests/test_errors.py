"""Structured errors: every error carries a kind and a reason code with its data; the CLI's
hints come from the reason alone (rpcctl/_explain.py), never from the message's text."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app_agent.wire import Reason, environment
from rpcctl import _explain
from rpcctl._settings import Settings
from rpcctl.cli import cli
from rpcctl.exceptions import (
    AuthenticationFailed,
    Busy,
    CallTimeout,
    NoSuchTask,
    RpcctlError,
    TaskFailed,
    Unreachable,
    UsageError,
    raise_error,
)

ROOT = Path(__file__).resolve().parent.parent

HINTS: list[tuple[RpcctlError, dict[str, Any], str]] = [
    (
        Unreachable("m", reason=Reason.NO_SOCKET),
        {"start": "bin/shop"},
        "; start it with `bin/shop start`",
    ),
    (
        Unreachable("m", reason=Reason.STALE_SOCKET),
        {"start": "rpcctl"},
        "; start it with `rpcctl start`",
    ),
    (
        Unreachable("m", reason=Reason.APP_GONE),
        {"start": "rpcctl"},
        "; start it with `rpcctl start`",
    ),
    (
        Unreachable("m", reason=Reason.CONNECTION_REFUSED),
        {"start": "x"},
        "; start it with `x start`",
    ),
    (
        AuthenticationFailed("m", reason=Reason.WRONG_COOKIE),
        {"cookie_source": "$RPCCTL_COOKIE"},
        " (our cookie was read from $RPCCTL_COOKIE)",
    ),
    (
        AuthenticationFailed("m", reason=Reason.AGENT_UNPROVEN),
        {"cookie_source": "--cookie-file c"},
        " (our cookie was read from --cookie-file c)",
    ),
    (
        Busy("m", reason=Reason.LOCK_HELD),
        {"lock_wait": True},
        "; to wait for it instead, add --lock-wait SECONDS",
    ),
    (
        NoSuchTask("m", reason=Reason.NO_SUCH_TASK),
        {"prog": "bin/shop"},
        "; `bin/shop tasks` lists the registered tasks",
    ),
    (UsageError("m", reason=Reason.NO_SUCH_JOB), {}, "; `rpcctl jobs` lists recent jobs"),
    (UsageError("m", reason=Reason.NO_METHOD), {"prog": "bin/shop"}, " (see `bin/shop info`)"),
    (UsageError("m", reason=Reason.NO_RUNNER), {}, "; start the app with `rpcctl start`"),
    (
        Busy("m", reason=Reason.PROFILE_RUNNING, data={"id": "profile-3"}),
        {"prog": "bin/shop"},
        ": `bin/shop cancel profile-3` ends it",
    ),
    (CallTimeout("m", reason=Reason.STILL_RUNNING), {}, " (`rpcctl jobs` lists it)"),
    (
        CallTimeout("m", reason=Reason.STILL_RUNNING, data={"job": "job-7"}),
        {"prog": "bin/shop"},
        ": follow it with `bin/shop logs job-7 --follow`, "
        "or wait for it with `bin/shop wait job-7`",
    ),
]


@pytest.mark.parametrize(
    ("exc", "context", "hint"), HINTS, ids=lambda v: getattr(v, "reason", None)
)
def test_each_reason_gives_its_hint(exc: RpcctlError, context: dict[str, Any], hint: str) -> None:
    assert _explain.explain(exc, **context) == "m" + hint


@pytest.mark.parametrize(
    ("exc", "context", "hint"), HINTS, ids=lambda v: getattr(v, "reason", None)
)
def test_a_reworded_message_keeps_its_hint(
    exc: RpcctlError, context: dict[str, Any], hint: str
) -> None:
    reworded = type(exc)("something else entirely", reason=exc.reason, data=exc.data)
    assert _explain.explain(reworded, **context) == "something else entirely" + hint


def test_the_hints_need_their_context_and_their_reason() -> None:
    # The hint is the reason's: the words of an old hint in a message bring nothing.
    worded = Unreachable("unix:x: no agent is running (the socket does not exist)")
    assert _explain.explain(worded, start="rpcctl") == worded.message
    cookie = AuthenticationFailed("wrong cookie", reason=Reason.WRONG_COOKIE)
    assert _explain.explain(cookie, cookie_source="") == "wrong cookie"  # no cookie of ours
    assert _explain.explain(Unreachable("m", reason=Reason.NO_SOCKET)) == "m"  # no app config
    assert _explain.explain(Busy("m", reason=Reason.LOCK_HELD)) == "m"  # --lock-wait was given
    assert _explain.explain(Busy("m", reason=Reason.NO_THREAD), lock_wait=True) == "m"
    assert _explain.explain(AuthenticationFailed("m", reason=Reason.PEER_UID)) == "m"


def test_the_settings_name_the_command_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(environment.PROG, "bin/shop")
    exc = NoSuchTask("no task named 'x'", reason=Reason.NO_SUCH_TASK, data={"task": "x"})
    assert Settings().explain(exc) == (
        "no task named 'x'; `bin/shop tasks` lists the registered tasks"
    )


def test_an_envelope_becomes_its_kinds_exception_with_reason_and_data() -> None:
    with pytest.raises(UsageError) as usage:
        raise_error({"kind": "usage", "message": "no job", "reason": "no_such_job", "job": "j1"})
    assert (usage.value.reason, usage.value.data, usage.value.exit_code) == (
        "no_such_job",
        {"job": "j1"},
        2,
    )
    with pytest.raises(TaskFailed) as failed:
        raise_error(
            {"kind": "task_failed", "message": "boom", "reason": "raised", "type": "E", "job": "j"}
        )
    assert (failed.value.reason, failed.value.data, failed.value.type) == (
        "raised",
        {"job": "j"},
        "E",
    )
    with pytest.raises(Unreachable) as older:  # an older agent: no reason
        raise_error({"kind": "unreachable", "message": "gone"})
    assert (older.value.reason, older.value.data) == (None, {})


# -- through the CLI: --json carries the reason, the exit codes stay ----------------------------


def test_cli_json_carries_the_reason_of_a_missing_socket(tmp_path: Path) -> None:
    node = f"unix:{tmp_path}/absent.sock"
    result = CliRunner().invoke(cli, ["-n", node, "info", "--json"])
    assert result.exit_code == 3
    error = json.loads(result.stdout)["error"]
    assert error == {
        "kind": "unreachable",
        "reason": "no_socket",
        "path": f"{tmp_path}/absent.sock",
        "message": f"{node}: no agent is running (the socket does not exist)",
        "exit_code": 3,
    }
    assert result.stderr == f"rpcctl: error: {error['message']}\n"


def test_cli_json_carries_the_agents_reason_and_data(agent_in_process: Any) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["-n", agent_in_process.node, "rpc", "nope.task", "--json"])
    assert missing.exit_code == 6
    error = json.loads(missing.stdout)["error"]
    assert (error["kind"], error["reason"], error["task"], error["exit_code"]) == (
        "no_such_task",
        "no_such_task",
        "nope.task",
        6,
    )
    assert error["message"] == (
        "no task named 'nope.task'; `rpcctl tasks` lists the registered tasks"
    )
    job = runner.invoke(cli, ["-n", agent_in_process.node, "logs", "job-404", "--json"])
    assert job.exit_code == 2
    error = json.loads(job.stdout)["error"]
    assert (error["reason"], error["job"]) == ("no_such_job", "job-404")
    assert job.stderr == (
        "rpcctl: error: no job 'job-404' (it may have left the history); "
        "`rpcctl jobs` lists recent jobs\n"
    )


# -- no behaviour depends on a message's text --------------------------------------------------

_TEXT_MATCHES = re.compile(
    r"""(\bin (message|msg|str\(exc\w*\)|exc\.message)\b"""
    r"""|(message|msg|str\(exc\w*\))\.(startswith|endswith|replace)\("""
    r"""|message == "|str\(exc\w*\) ==)"""
)


def _text_matches(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if _TEXT_MATCHES.search(line)]


def test_no_code_matches_message_text() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for package in ("rpcctl", "app_agent")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (hits := _text_matches(path.read_text()))
    }
    assert found == {}


def test_the_text_match_check_can_fail() -> None:
    assert _text_matches('    if "no agent is running" in message:\n') != []
    assert _text_matches('    message = message.replace("`rpcctl ", prog)\n') != []
    assert _text_matches("    if str(exc) == START_REFUSED:\n") != []
    assert _text_matches('    if "cookie" in message and source:\n') != []
    assert _text_matches("    if reason == Reason.WRONG_COOKIE:\n") == []
    assert _text_matches('    if str(exc) == "boom":\n') != []
