"""PostgreSQL lock URLs as the docs show them (``postgresql://...``): whichever driver is
installed, psycopg 3 or psycopg2, and a clear error when none is."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import app_agent
from app_agent._jobs import locks as _locks
from app_agent.exceptions import ConfigurationError
from conftest import SAMPLEAPP, AppProcess, wait_until

PG_URL = os.environ.get("RPCCTL_TEST_PG_PLAIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
DRIVERS = ("psycopg", "psycopg2")
MISSING_HINT = "pip install 'psycopg[binary]' (or psycopg2-binary)"


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make *modules* fail to import, as if they were not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def other(driver: str) -> str:
    return next(d for d in DRIVERS if d != driver)


@pytest.mark.parametrize(
    ("url", "blocked", "expected"),
    [
        ("postgresql://u@h/db", (), "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", ("psycopg",), "postgresql+psycopg2://u@h/db"),
        ("postgres://u@h:5433/db", ("psycopg",), "postgresql+psycopg2://u@h:5433/db"),
        ("postgresql+psycopg2://u@h/db", (), "postgresql+psycopg2://u@h/db"),  # as given
        ("postgresql+psycopg://u@h/db", ("psycopg2",), "postgresql+psycopg://u@h/db"),
    ],
)
def test_a_plain_url_names_an_installed_driver(
    monkeypatch: pytest.MonkeyPatch, url: str, blocked: tuple[str, ...], expected: str
) -> None:
    block(monkeypatch, *blocked)
    assert _locks.with_driver(url) == expected


def test_no_driver_is_a_configuration_error_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path
) -> None:
    block(monkeypatch, *DRIVERS)
    with pytest.raises(ConfigurationError) as caught:
        _locks.backend(PG_URL)
    assert str(caught.value) == f"PostgreSQL locks need a PostgreSQL driver: {MISSING_HINT}"
    # start() fails with it, before it listens.
    with pytest.raises(ConfigurationError, match="need a PostgreSQL driver"):
        app_agent.start(node=f"unix:{short_tmp}/agent.sock", locks=PG_URL)
    assert not (short_tmp / "agent.sock").exists()


def test_an_explicit_driver_that_is_missing_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block(monkeypatch, "psycopg2")
    with pytest.raises(ConfigurationError, match=r"the driver of postgresql\+psycopg2:// is not"):
        _locks.backend("postgresql+psycopg2://u@h/db")


@pytest.fixture
def pg(pg_server: str) -> str:
    """The server's URL without a driver: what the docs tell users to write."""
    return PG_URL


@pytest.mark.pg
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_real_lock_with_each_driver(
    monkeypatch: pytest.MonkeyPatch, pg: str, driver: str
) -> None:
    block(monkeypatch, other(driver))
    first, second = _locks.backend(pg), _locks.backend(pg)
    assert isinstance(first, _locks.PostgresLocks)
    assert isinstance(second, _locks.PostgresLocks)
    assert first.engine.dialect.driver == driver
    name = f"test-{driver}-{os.getpid()}"
    lease = first.acquire(name, _locks.Holder("j1", "m.t", "tester", time.time()), 0)
    try:
        with pytest.raises(_locks.Busy, match=r"held by job j1 \(m\.t, called by tester"):
            second.acquire(name, _locks.Holder("j2", "m.t", "other", time.time()), 0)
    finally:
        lease.release()
    second.acquire(name, _locks.Holder("j2", "m.t", "other", time.time()), 0).release()


Hide = Callable[[str], dict[str, str]]


@pytest.fixture
def without(tmp_path: Path) -> Hide:
    """The environment of an app process that uses the documented lock URL, with a
    sitecustomize that hides one driver from it."""

    def env(module: str) -> dict[str, str]:
        site = tmp_path / module
        site.mkdir()
        (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
        return {"PYTHONPATH": str(site), "SAMPLEAPP_LOCKS": PG_URL}

    return env


@pytest.mark.pg
@pytest.mark.parametrize("driver", DRIVERS)
def test_apps_with_the_documented_url_share_a_lock(
    short_tmp: Path, pg: str, driver: str, without: Hide
) -> None:
    """RPCCTL_LOCKS=postgresql://... with only *driver* installed: the apps start, and a
    lock one holds is busy for the other."""
    env = without(other(driver))
    apps = [AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/app{n}.sock", env=env) for n in (1, 2)]
    try:
        holder = apps[0].rpcctl("rpc", "--detach", "sampleapp.locked(60)").stdout.strip()
        wait_until(lambda: "holding the lock" in apps[0].rpcctl("logs", holder).stdout)
        busy = apps[1].rpcctl("rpc", "sampleapp.locked(0)")
        assert busy.returncode == 7, busy.stderr
        assert f"held by job {holder} (sampleapp.locked" in busy.stderr
        assert apps[0].rpcctl("cancel", holder).returncode == 0
        freed = apps[1].rpcctl("rpc", "--lock-wait", "30", "sampleapp.locked(0)")
        assert freed.returncode == 0, freed.stderr
    finally:
        for app in apps:
            app.close()
