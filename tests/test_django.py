"""app_agent.contrib.django: the example Django project under real servers (gunicorn,
runserver), with the real rpcctl executable; and the pieces that decide and check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django_support import (
    _DRAINS,
    ALL_MIGRATIONS,
    DJANGOAPP,
    QUESTION,
    add_gate_app,
    django_env,
    http_get,
    info,
    parent_pid,
    read_until,
    rpc_result,
    start_gunicorn,
    write_settings,
)

from conftest import (
    DEADLINE,
    AppProcess,
    popen_rpcctl,
    rpcctl_executable,
    run_rpcctl,
    wait_until,
)

# -- which process starts the agent ---------------------------------------------------------

SERVING = [
    (["/venv/bin/gunicorn", "-c", "gunicorn.conf.py", "mysite.wsgi"], {}, True),
    (["/venv/lib/python3.12/site-packages/gunicorn/__main__.py", "mysite.wsgi"], {}, True),
    (["/venv/bin/uvicorn", "mysite.asgi:application"], {}, True),
    (["daphne", "mysite.asgi:application"], {}, True),
    (["manage.py", "runserver"], {"RUN_MAIN": "true"}, True),  # the autoreloader's child
    (["manage.py", "runserver"], {}, False),  # the autoreloader's parent
    (["/srv/mysite/manage.py", "runserver", "--noreload"], {}, True),
    (["django-admin", "runserver", "0:8000"], {"RUN_MAIN": "true"}, True),
    (["manage.py", "migrate"], {"RUN_MAIN": "true"}, False),
    (["manage.py", "shell"], {}, False),
    (["manage.py", "check", "--noreload"], {}, False),
    (["manage.py"], {}, False),
    (["/venv/bin/pytest", "tests"], {}, False),
    (["/venv/bin/celery", "-A", "mysite", "worker"], {}, False),
    ([], {}, False),
]


@pytest.mark.parametrize(("argv", "environ", "serving"), SERVING)
def test_serving_process_detection(argv: list[str], environ: dict[str, str], serving: bool) -> None:
    from app_agent.contrib.django._serving import is_serving

    assert is_serving(argv, environ) is serving


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["manage.py", "migrate"], ""),
        (["manage.py", "shell", "-c", "import app_agent; print(app_agent.current())"], "None\n"),
        (["manage.py", "check"], "System check identified no issues (0 silenced).\n"),
    ],
)
def test_management_commands_never_start_the_agent(
    short_tmp: Path, argv: list[str], expected: str
) -> None:
    node = short_tmp / "agent.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env.update(django_env(short_tmp, RPCCTL_NODE=f"unix:{node}"))
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=DJANGOAPP,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "agent.started" not in result.stderr
    assert not node.exists()
    if expected:
        assert result.stdout.endswith(expected)  # Django 5.2's shell may say what it imported
    else:
        assert "Applying polls.0001_initial... OK" in result.stdout


def test_autostart_setting_forces_the_agent_into_any_process(short_tmp: Path) -> None:
    """The other side of the test above: the check there can see an agent when one runs."""
    node = short_tmp / "agent.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env.update(django_env(short_tmp, RPCCTL_NODE=f"unix:{node}", RPCCTL_DJANGO_AUTOSTART="true"))
    script = (
        "import app_agent, os; a = app_agent.current(); print(a.node, os.path.exists(a.node[5:]))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=DJANGOAPP,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"unix:{node} True\n")
    assert not node.exists()  # stopped at exit


def test_bad_commands_setting_stops_django_with_a_clear_message(short_tmp: Path) -> None:
    write_settings(short_tmp, "badsettings", 'RPCCTL_DJANGO_COMMANDS = "migrate"')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env.update(django_env(short_tmp, DJANGO_SETTINGS_MODULE="badsettings"))
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=DJANGOAPP,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )
    assert result.returncode == 1
    assert (
        "ImproperlyConfigured: RPCCTL_DJANGO_COMMANDS must be a list of command names, "
        "got 'migrate'" in result.stderr
    )


# -- live output and the migrations lock ------------------------------------------------------


def test_output_streams_live_and_a_second_migrate_finds_the_lock_held(short_tmp: Path) -> None:
    settings = add_gate_app(short_tmp)
    gate = short_tmp / "gate-open"
    node = f"unix:{short_tmp}/agent.sock"
    app, _ = start_gunicorn(
        short_tmp, node, workers=1, DJANGO_SETTINGS_MODULE=settings, DJANGO_TEST_GATE=str(gate)
    )
    first = popen_rpcctl("-n", node, "rpc", "django.migrate")
    waiter = None
    try:
        lines = read_until(first, "gate: waiting")
        assert "Running migrations:\n" in lines
        assert first.poll() is None  # Django's lines arrived while the migration runs
        busy = run_rpcctl("-n", node, "rpc", "django.migrate")
        assert busy.returncode == 7
        assert "lock 'migrations' is held by job" in busy.stderr
        assert "(django.migrate, called by" in busy.stderr
        waiter = popen_rpcctl(
            "-n", node, "rpc", "--json", "--lock-wait", str(DEADLINE), "django.migrate"
        )
        wait_until(
            lambda: sorted(j["state"] for j in rpc_jobs(node)) == ["failed", "running", "running"],
            what="the second call to wait for the lock",
        )
        gate.touch()
        first.wait(timeout=DEADLINE)  # its stdout is read on a thread since read_until
        out = _DRAINS[first.stdout].rest(DEADLINE)
        err = first.stderr.read() if first.stderr is not None else ""
        for pipe in (first.stdout, first.stderr):
            if pipe is not None:
                pipe.close()
        assert first.returncode == 0, err
        assert "gate: open" in out
        assert json.loads(out[out.index("[\n") :]) == ["gate.0001_gate", *ALL_MIGRATIONS]
        out, err = waiter.communicate(timeout=DEADLINE)
        assert waiter.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == {"ok": True, "result": []}
    finally:
        gate.touch()
        for proc in (first, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        app.close()


def rpc_jobs(node: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(run_rpcctl("-n", node, "jobs", "--json").stdout)[
        "result"
    ]
    return listed


@pytest.mark.pg
def test_two_replicas_on_postgresql_apply_each_migration_exactly_once(
    short_tmp: Path,
    pg_database: str,
) -> None:
    settings = add_gate_app(short_tmp)
    gate = short_tmp / "gate-open"
    env = {
        "DJANGO_SETTINGS_MODULE": settings,
        "DJANGO_TEST_GATE": str(gate),
        "DATABASE_URL": pg_database,
        "RPCCTL_LOCKS": pg_database,
        "PYTHONPATH": f"{short_tmp}{os.pathsep}{DJANGOAPP}",  # the gate's settings and app
    }
    (short_tmp / "a").mkdir()
    (short_tmp / "b").mkdir()
    replicas = []
    procs: list[subprocess.Popen[str]] = []
    try:
        for name in ("a", "b"):
            node = f"unix:{short_tmp}/{name}/agent.sock"
            app, http = start_gunicorn(short_tmp / name, node, workers=1, **env)
            replicas.append((app, node, http))
        (_, node_a, _), (_, node_b, http_b) = replicas
        # Both replicas are told to migrate at once; one holds the lock inside the gate.
        wait = str(DEADLINE * 2)
        procs = [
            popen_rpcctl("-n", n, "rpc", "--json", "--lock-wait", wait, "django.migrate")
            for n in (node_a, node_b)
        ]
        holder = wait_for_lock_holder([node_a, node_b])
        other = node_b if holder == node_a else node_a
        busy = run_rpcctl("-n", other, "rpc", "django.migrate")
        assert busy.returncode == 7
        holder_pid = info(holder)["pid"]
        assert f"pid {holder_pid}) since" in busy.stderr  # the holder, seen across processes
        gate.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=DEADLINE * 2)
            assert proc.returncode == 0, err
            results.append(json.loads(out.splitlines()[-1])["result"])
        assert sorted(results, key=len) == [[], ["gate.0001_gate", *ALL_MIGRATIONS]]
        engine = sa.create_engine(pg_database)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.text("SELECT app, name, count(*) FROM django_migrations GROUP BY app, name")
                ).all()
                questions = connection.execute(sa.text("SELECT text FROM polls_question")).all()
        finally:
            engine.dispose()
        assert sorted(f"{app}.{name}" for app, name, _ in rows) == sorted(
            ["gate.0001_gate", *ALL_MIGRATIONS]
        )
        assert {count for _, _, count in rows} == {1}
        assert [q for (q,) in questions] == [QUESTION]  # the data migration ran once
        assert http_get(http_b, "/polls/") == (200, {"questions": [QUESTION]})
    finally:
        gate.touch()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for app, _, _ in replicas:
            app.close()


def wait_for_lock_holder(nodes: list[str]) -> str:
    """The node whose django.migrate job runs while the other one's waits for the lock."""
    found: list[str] = []

    def one_is_migrating() -> bool:
        for node in nodes:
            running = [j for j in rpc_jobs(node) if j["state"] == "running"]
            output = [run_rpcctl("-n", node, "logs", j["id"]).stdout for j in running]
            if any("gate: waiting" in text for text in output):
                found.append(node)
                return True
        return False

    wait_until(one_is_migrating, what="one replica to hold the lock inside the gate")
    return found[0]


# -- runserver ------------------------------------------------------------------------------


def start_runserver(tmp: Path, node: str, *extra: str) -> AppProcess:
    app = AppProcess(
        [sys.executable, "manage.py", "runserver", "127.0.0.1:0", *extra],
        node=node,
        env=django_env(tmp),
        cwd=DJANGOAPP,
        ready_line=None,
    )
    waited = run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE))
    if waited.returncode != 0:
        pytest.fail(f"runserver's agent never answered: {waited.stderr}\n{app.stderr()}")
    return app


def test_runserver_with_the_autoreloader_runs_the_agent_in_the_serving_child(
    short_tmp: Path,
) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    app = start_runserver(short_tmp, node)
    try:
        child = info(node)["pid"]
        assert child != app.proc.pid
        assert parent_pid(child) == app.proc.pid
        assert rpc_result(node, "django.migrate") == ALL_MIGRATIONS
        assert rpc_result(node, "django.migrate") == []
        os.kill(child, signal.SIGINT)  # what Ctrl-C does to it
        assert app.proc.wait(timeout=DEADLINE) == 0
        assert not (short_tmp / "agent.sock").exists()
        assert app.stderr().count('"agent.started"') == 1  # never in the reloader's parent
    finally:
        app.close()


def test_runserver_noreload_runs_the_agent_in_its_only_process(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    app = start_runserver(short_tmp, node, "--noreload")
    try:
        assert info(node)["pid"] == app.proc.pid
        assert rpc_result(node, "django.migrate") == ALL_MIGRATIONS
        app.proc.send_signal(signal.SIGINT)
        assert app.proc.wait(timeout=DEADLINE) == 0
        assert not (short_tmp / "agent.sock").exists()
    finally:
        app.close()


# -- the example as a release --------------------------------------------------------------


def test_example_release_migrates_in_its_post_start_hook(short_tmp: Path) -> None:
    root = short_tmp / "djangoapp"
    shutil.copytree(DJANGOAPP, root, ignore=shutil.ignore_patterns("var", "run", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RPCCTL_BIN"] = rpcctl_executable()
    env["DJANGOAPP_BIND"] = f"unix:{short_tmp}/http.sock"
    launcher = str(root / "bin" / "djangoapp")
    release = subprocess.Popen(
        [launcher, "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        def migrated() -> bool:
            shown = subprocess.run(
                [launcher, "rpc", "--json", "django.showmigrations"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if shown.returncode != 0:
                return False
            apps = json.loads(shown.stdout.splitlines()[-1])["result"]
            return apps["polls"]["pending"] == [] and apps["polls"]["applied"] != []

        wait_until(migrated, what="the post_start hook to migrate")
        status = http_get(f"{short_tmp}/http.sock", "/polls/")
        assert status == (200, {"questions": [QUESTION]})
        assert (root / "var" / "djangoapp.db").exists()  # SQLite by default, in the release
        stopped = subprocess.run(
            [launcher, "stop"], env=env, capture_output=True, text=True, check=False
        )
        assert stopped.returncode == 0, stopped.stderr
        out, err = release.communicate(timeout=DEADLINE)
        assert release.returncode == 0, err
        assert "migrating djangoapp" in out + err
        assert "polls.0002_first_question" in out + err
    finally:
        if release.poll() is None:
            release.kill()
            release.communicate()


# -- the settings and the checks, in this process -------------------------------------------


@pytest.fixture
def django_settings() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=[],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        )
        django.setup()  # no apps: this registers no task in the test process
    return settings


def test_start_options_setting_is_checked(django_settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from app_agent.contrib.django import _settings

    with (
        override_settings(RPCCTL_AGENT_OPTIONS={"lock": "memory"}),
        pytest.raises(ImproperlyConfigured, match=r"keys among \[.*'locks'.*\]; not \['lock'\]"),
    ):
        _settings.start_options()
    with override_settings(RPCCTL_AGENT_OPTIONS={"locks": "memory", "app": "shop"}):
        assert _settings.start_options() == {"locks": "memory", "app": "shop"}
    with override_settings(RPCCTL_NODE=8000), pytest.raises(ImproperlyConfigured, match="string"):
        _settings.node()
    with override_settings(RPCCTL_TASKS="shop.tasks"), pytest.raises(ImproperlyConfigured):
        _settings.task_modules()


@pytest.mark.parametrize(
    ("setting", "env", "expected"),
    [
        (None, None, None),
        (True, "0", True),
        (None, "off", False),
        (None, "auto", None),
        ("yes", None, True),
    ],
)
def test_autostart_setting(
    django_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    setting: Any,
    env: str | None,
    expected: bool | None,
) -> None:
    from django.test import override_settings

    from app_agent.contrib.django import _settings

    if env is None:
        monkeypatch.delenv("RPCCTL_DJANGO_AUTOSTART", raising=False)
    else:
        monkeypatch.setenv("RPCCTL_DJANGO_AUTOSTART", env)
    with override_settings(RPCCTL_DJANGO_AUTOSTART=setting):
        assert _settings.autostart() is expected


def test_autostart_setting_refuses_other_values(django_settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from app_agent.contrib.django import _settings

    with (
        override_settings(RPCCTL_DJANGO_AUTOSTART="sometimes"),
        pytest.raises(ImproperlyConfigured, match="true, false or auto, got 'sometimes'"),
    ):
        _settings.autostart()


def test_health_checks_register_only_where_the_feature_exists(
    django_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app_agent
    from app_agent.contrib.django import checks

    if not hasattr(app_agent, "health_check"):
        assert checks.register_health_checks() is False
    registered: list[tuple[str, Any]] = []

    def health_check(name: str) -> Any:
        return lambda func: registered.append((name, func)) or func

    monkeypatch.setattr(app_agent, "health_check", health_check, raising=False)
    assert checks.register_health_checks() is True
    assert registered == [
        ("django.system_checks", checks.system_checks),
        ("django.database", checks.database_check),
    ]
    assert checks.database_check() == ["default"]
    assert checks.system_checks() == 0


def run_manage(tmp: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    full.update(django_env(tmp, **env))
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=DJANGOAPP,
        env=full,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )


def test_an_unusable_node_stops_the_server_with_a_clear_message(short_tmp: Path) -> None:
    result = run_manage(
        short_tmp, "runserver", "--noreload", "127.0.0.1:0", RPCCTL_NODE="tcp://127.0.0.1:0"
    )
    assert result.returncode == 1
    assert (
        "ImproperlyConfigured: rpcctl agent: tcp://127.0.0.1:0: the agent listens on TCP only "
        "with a cookie"
    ) in result.stderr


def test_no_node_serves_without_an_agent_and_says_why(short_tmp: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:0"],
        cwd=DJANGOAPP,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")},
            **django_env(short_tmp),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_until(server, "agent.not_started", stream="stderr")[-1]
        assert "no node address: set RPCCTL_NODE in the settings or the environment" in line
        read_until(server, "Quit the server with CONTROL-C.")  # it serves all the same
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=DEADLINE) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
