"""The Python client API against a real agent: results and one typed error per exit code."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

import app_agent
import rpcctl


def test_call_returns_plain_data(agent_in_process: app_agent.Agent) -> None:
    with rpcctl.connect(agent_in_process.node) as app:
        assert app.ping() == "pong"
        assert app.call("sampleapp.add", 1, 2, scale=10) == 30
        assert app.call("add", 2) == 2  # the alias
        assert app.call("sampleapp.echo", {"a": [1, None]}) == {"a": [1, None]}
        assert app.call("sampleapp.async_double", 21) == 42
        weird = app.call("sampleapp.weird")
        assert weird["set"] == [1, 2, 3]
        assert weird["object"] == "<Plain>"


def test_tasks_and_info(agent_in_process: app_agent.Agent) -> None:
    with rpcctl.connect(agent_in_process.node) as app:
        names = {t["name"] for t in app.tasks()}
        info = app.info()
    assert {"sampleapp.add", "sampleapp.sleep", "sampleapp.async_double"} <= names
    assert info["app"] == "inproc"
    assert info["node"] == agent_in_process.node
    assert info["versions"]["rpcctl"] == rpcctl.__version__
    assert info["jobs"] == []


def test_typed_errors(agent_in_process: app_agent.Agent) -> None:
    with rpcctl.connect(agent_in_process.node) as app:
        with pytest.raises(rpcctl.NoSuchTask, match="no task named 'nope'") as no_task:
            app.call("nope")
        with pytest.raises(rpcctl.TaskFailed, match="ValueError: bad") as failed:
            app.call("sampleapp.boom", "bad")
        with pytest.raises(rpcctl.UsageError, match=r"the signature is sampleapp\.add") as usage:
            app.call("sampleapp.add", 1, 2, 3)
        with pytest.raises(rpcctl.CallTimeout, match="goes on running") as timeout:
            app.invoke("sampleapp.sleep", [1.0], timeout=0.05)
        with pytest.raises(rpcctl.UsageError, match="JSON data"):
            app.call("sampleapp.echo", object())
        # The connection is still good after all of that.
        assert app.call("sampleapp.echo", "still here") == "still here"
    assert "raise ValueError(message)" in failed.value.remote_traceback
    assert [e.value.exit_code for e in (failed, usage, timeout, no_task)] == [1, 2, 4, 6]


def test_unreachable(short_tmp: Path) -> None:
    with pytest.raises(rpcctl.Unreachable, match="socket does not exist") as caught:
        rpcctl.connect(f"unix:{short_tmp}/none.sock")
    assert caught.value.exit_code == 3


def test_many_threads_get_their_own_results(agent_in_process: app_agent.Agent) -> None:
    def one(i: int) -> dict[str, object]:
        with rpcctl.connect(agent_in_process.node) as app:
            result: dict[str, object] = app.call("sampleapp.identity", f"token-{i}")
            return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(40)))
    assert [r["token"] for r in results] == [f"token-{i}" for i in range(40)]


def test_wait_for_returns_at_once_when_up(agent_in_process: app_agent.Agent) -> None:
    assert rpcctl.wait_for(agent_in_process.node, timeout=5) < 5


def test_no_node_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RPCCTL_NODE", raising=False)
    with pytest.raises(rpcctl.ConfigError, match="RPCCTL_NODE") as caught:
        rpcctl.connect()
    assert caught.value.exit_code == 2
