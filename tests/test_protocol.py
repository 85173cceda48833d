"""The protocol's table against both sides: every method of ``app_agent.wire.protocol.METHODS``
has a service handler and a client call with the table's argument names, and neither side
has a method the table lacks. The checker is proven to catch a mismatch on fake tables."""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import rpyc
import structlog

import rpcctl.client
from app_agent import _service, _state
from app_agent._caller import Caller
from app_agent._jobs.locks import MemoryLocks
from app_agent._registry import Registry
from app_agent._server.access import Identity
from app_agent.wire import protocol
from app_agent.wire.protocol import METHODS, READ, Arg, Method

CLIENT_SOURCE = Path(rpcctl.client.__file__)
_SENDERS = frozenset({"_send", "_result"})


def client_calls(source: str) -> dict[str, set[str]]:
    """The requests a client's source makes: ``self._send("name", {"arg": ...})`` (or
    ``self._result(...)``), by method name, with the argument names it gives. The argument
    dict must be written out literally, so that this reading stays exact."""
    calls: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SENDERS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "self"
        ):
            continue
        first = node.args[0] if node.args else None
        if not isinstance(first, ast.Constant):  # _result() passing its own on to _send()
            continue
        names = calls.setdefault(str(first.value), set())
        if len(node.args) > 1:
            given = node.args[1]
            if isinstance(given, ast.Name):  # a dict built just above: find its literal
                given = _assigned(source, given.id)
            assert isinstance(given, ast.Dict), ast.unparse(node)
            names |= {k.value for k in given.keys if isinstance(k, ast.Constant)}
    return calls


def _assigned(source: str, name: str) -> ast.expr:
    values = [
        n.value
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Assign) and [ast.unparse(t) for t in n.targets] == [name]
    ]
    assert values, name
    assert all(ast.unparse(v) == ast.unparse(values[0]) for v in values), name
    return values[0]


def disagreements(
    methods: Mapping[str, Method],
    handler_of: Callable[[Method], Callable[..., str] | None],
    exposed: set[str],
    client: Mapping[str, set[str]],
) -> list[str]:
    """Where the service (its handlers, its exposed_ names) and the client's calls depart
    from *methods*; empty when they agree."""
    problems = []
    for name, method in methods.items():
        wanted = [a.name for a in method.args]
        handler = handler_of(method)
        if handler is None:
            problems.append(f"{name}: no service handler")
        else:
            params = list(inspect.signature(handler).parameters)[1:]  # after the caller
            if params != wanted:
                problems.append(f"{name}: the handler takes {params}, the table {wanted}")
        if f"exposed_{name}" not in exposed:
            problems.append(f"{name}: not exposed by the service")
        if name not in client:
            problems.append(f"{name}: no client call")
        elif client[name] != set(wanted):
            problems.append(f"{name}: the client sends {sorted(client[name])}, the table {wanted}")
    problems += [f"{e}: exposed, not in the table" for e in sorted(exposed) if e[8:] not in methods]
    problems += [f"{c}: called by the client, not in the table" for c in client if c not in methods]
    return problems


RPYC_OWN = {"exposed_get_service_aliases", "exposed_get_service_name"}
"""What every rpyc.Service exposes (its name and aliases): RPyC's, not the protocol's."""


def _exposed_names() -> set[str]:
    names = {n for n in dir(_service.AgentService) if n.startswith("exposed_")}
    assert {n for n in dir(rpyc.Service) if n.startswith("exposed_")} == RPYC_OWN
    return names - RPYC_OWN


def test_the_service_and_the_client_agree_with_the_table() -> None:
    calls = client_calls(CLIENT_SOURCE.read_text())
    assert disagreements(METHODS, _service.handler_of, _exposed_names(), calls) == []
    assert len(calls) == len(METHODS) == 23


def test_the_checker_catches_each_kind_of_mismatch() -> None:
    calls = client_calls(CLIENT_SOURCE.read_text())
    renamed = dict(METHODS)
    # stats with its argument renamed: the handler and the client both disagree.
    renamed["stats"] = Method("stats", "introspection", READ, (Arg("count", "int", 0),), "{}")
    # A method the table gains without a handler or a client call.
    renamed["frobnicate"] = Method("frobnicate", "core", READ, (), "{}")
    # One the table loses, which the service still exposes and the client still calls.
    del renamed["jobs"]
    problems = disagreements(renamed, _service.handler_of, _exposed_names(), calls)
    assert problems == [
        "stats: the handler takes ['objects'], the table ['count']",
        "stats: the client sends ['objects'], the table ['count']",
        "frobnicate: no service handler",
        "frobnicate: not exposed by the service",
        "frobnicate: no client call",
        "exposed_jobs: exposed, not in the table",
        "jobs: called by the client, not in the table",
    ]


def test_the_client_reader_sees_a_call_with_a_wrong_argument_name() -> None:
    source = 'class C:\n    def f(self):\n        return self._send("stats", {"object": 1})\n'
    assert client_calls(source) == {"stats": {"object"}}
    problems = disagreements(
        {"stats": METHODS["stats"]}, _service.handler_of, {"exposed_stats"}, client_calls(source)
    )
    assert problems == ["stats: the client sends ['object'], the table ['objects']"]


def test_the_exposed_methods_show_the_tables_signatures() -> None:
    for name, method in METHODS.items():
        exposed = getattr(_service.AgentService, f"exposed_{name}")
        assert list(inspect.signature(exposed).parameters)[1:] == [a.name for a in method.args]


def test_the_client_copies_of_the_shared_constants_agree() -> None:
    # The client keeps its own copies: importing the table would cost `rpcctl ping`.
    assert rpcctl.client.SUMMARY_ONLY == protocol.SUMMARY_ONLY
    assert rpcctl.client.MAX_NESTING == protocol.MAX_NESTING
    assert rpcctl.client.DEFAULT_TIMEOUT == protocol.DEFAULT_TIMEOUT


# -- the dispatch: bind, then the grants, then the handler ----------------------------------


def _service_for(*allow: str) -> _service.AgentService:
    state = _state.AgentState(Registry(), "node", "app", structlog.get_logger(), MemoryLocks())
    return _service.AgentService(Caller(state, identity=Identity("oncall", allow)))


def _reply(text: str) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(text)
    return reply


def test_arguments_that_do_not_fit_are_a_usage_error_naming_the_signature() -> None:
    service = _service_for("*")
    reply = _reply(service.exposed_stats("three"))
    assert reply["error"] == {
        "kind": "usage",
        "reason": "bad_arguments",
        "message": "stats() takes objects: int = 0",
        "signature": "stats(objects: int = 0)",
    }
    assert _reply(service.exposed_stop(True, False))["error"]["reason"] == "bad_arguments"
    assert _reply(service.exposed_stop(restart=1))["error"]["reason"] == "bad_arguments"


@pytest.mark.parametrize(
    ("method", "args", "grant", "action"),
    [
        ("info", (), "read", "read info"),
        ("stop", (), "stop", "stop the app"),
        ("console_open", (), "console", "use the console"),
        ("log_level", ("root", "DEBUG"), "log_level", "set log levels"),
    ],
)
def test_a_missing_grant_is_refused_from_the_table_with_its_reason(
    method: str, args: tuple[Any, ...], grant: str, action: str
) -> None:
    service = _service_for("read")
    reply = _reply(getattr(service, f"exposed_{method}")(*args))
    if grant == "read":  # the identity holds it: served
        assert reply["ok"] is True
        return
    assert reply["error"] == {
        "kind": "auth",
        "reason": "grant_missing",
        "message": f"oncall may not {action} (that needs the {grant} grant)",
        "grant": grant,
        "action": action,
    }


def test_an_identity_without_read_is_refused_info() -> None:
    reply = _reply(_service_for("stop").exposed_info())
    assert (reply["error"]["reason"], reply["error"]["grant"]) == ("grant_missing", "read")
    assert _service_for().exposed_ping() == "pong"  # ping needs no grant


def test_a_job_that_does_not_exist_carries_its_reason_and_id() -> None:
    reply = _reply(_service_for("*").exposed_events("job-404"))
    assert reply["error"] == {
        "kind": "usage",
        "reason": "no_such_job",
        "message": "no job 'job-404' (it may have left the history)",
        "job": "job-404",
    }


def test_the_client_checks_arguments_locally_before_sending(agent_in_process: Any) -> None:
    with rpcctl.connect(agent_in_process.node) as conn:
        with pytest.raises(rpcctl.UsageError) as refused:
            conn.stats(objects="many")  # type: ignore[arg-type]
        assert refused.value.reason == "bad_arguments"
        assert refused.value.message.endswith("stats() takes objects: int = 0")
        assert conn.ping() == "pong"  # the connection is fine: nothing was sent


def test_a_raw_rpyc_caller_gets_the_tables_checks(agent_in_process: Any) -> None:
    """Through a real connection, by keyword or by position: the same binding."""
    from test_agent import _raw_rpyc

    conn = _raw_rpyc(agent_in_process.node)
    try:
        by_keyword = _reply(conn.root.stats(objects=2))
        assert by_keyword["ok"] is True
        assert len(by_keyword["result"]["objects"]) == 2
        unknown = _reply(conn.root.stats(count=2))["error"]
        assert (unknown["kind"], unknown["reason"]) == ("usage", "bad_arguments")
        twice = _reply(conn.root.events("job-1", cursor=0, job_id="job-1"))["error"]
        assert twice["reason"] == "bad_arguments"
        too_many = _reply(conn.root.jobs(1))["error"]
        assert too_many["message"] == "jobs() takes no arguments"
        assert conn.root.ping() == "pong"  # the connection goes on serving
    finally:
        conn.close()
