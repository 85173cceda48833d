"""A Django site under gunicorn (--preload, workers): one agent, in the arbiter."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from django_support import (
    ALL_MIGRATIONS,
    DJANGOAPP,
    QUESTION,
    django_env,
    http_get,
    info,
    open_files,
    parent_pid,
    rpc_result,
    start_gunicorn,
    write_settings,
)

from conftest import (
    DEADLINE,
    AppProcess,
    run_rpcctl,
    wait_until,
)

# -- gunicorn -------------------------------------------------------------------------------


def test_gunicorn_preloaded_runs_the_agent_once_in_the_arbiter_and_migrates_the_live_site(
    short_tmp: Path,
) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    app, http = start_gunicorn(short_tmp, node, workers=2)
    try:
        assert info(node)["pid"] == app.proc.pid  # the arbiter
        assert info(node)["app"] == "djangoapp"
        status, body = http_get(http, "/polls/")
        assert status == 503
        assert "polls_question" in body["error"]

        assert rpc_result(node, "django.migrate") == ALL_MIGRATIONS
        assert http_get(http, "/polls/") == (200, {"questions": [QUESTION]})
        again = run_rpcctl("-n", node, "rpc", "django.migrate")
        assert again.returncode == 0, again.stderr
        assert "No migrations to apply." in again.stdout
        assert again.stdout.endswith("[]\n")
        assert http_get(http, "/polls/") == (200, {"questions": [QUESTION]})
        # The agent's threads kept no database connection open (sqlite: an open file).
        assert open_files(app.proc.pid, "db.sqlite3") == []

        assert rpc_result(node, "django.showmigrations") == {
            "contenttypes": {
                "applied": ["0001_initial", "0002_remove_content_type_name"],
                "pending": [],
            },
            "polls": {"applied": ["0001_initial", "0002_first_question"], "pending": []},
        }
        checked = rpc_result(node, "django.check(deploy=True)")
        assert "security.W001" in {m["id"] for m in checked}  # no SecurityMiddleware
        assert {m["level"] for m in checked} == {"WARNING"}
        assert rpc_result(node, "django.check") == []
        # Django's system checks and its database are health checks of the live site.
        health = run_rpcctl("-n", node, "health", "--json")
        assert health.returncode == 0, health.stdout + health.stderr
        checks = {c["name"]: c["ok"] for c in json.loads(health.stdout)["result"]["checks"]}
        assert checks["django.system_checks"] is True
        assert checks["django.database"] is True
        assert open_files(app.proc.pid, "db.sqlite3") == []
        workers = {http_get(http, "/health")[1]["status"] for _ in range(3)}
        assert workers == {"ok"}
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(timeout=DEADLINE) == 0
        assert not (short_tmp / "agent.sock").exists()  # stopped at exit
        assert app.stderr().count('"agent.started"') == 1
    finally:
        app.close()


def test_gunicorn_single_worker_without_preload_runs_the_agent_in_the_worker(
    short_tmp: Path,
) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    app, http = start_gunicorn(short_tmp, node, workers=1, preload=False)
    try:
        where = info(node)["pid"]
        assert where != app.proc.pid
        assert parent_pid(where) == app.proc.pid  # a worker of this arbiter
        assert rpc_result(node, "django.migrate") == ALL_MIGRATIONS
        assert http_get(http, "/polls/") == (200, {"questions": [QUESTION]})
        assert open_files(where, "db.sqlite3") == []
        app.proc.send_signal(signal.SIGTERM)
        app.proc.wait(timeout=DEADLINE)
        assert not (short_tmp / "agent.sock").exists()
    finally:
        app.close()


def test_uvicorn_runs_the_agent_and_migrates_the_live_site(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    http = f"{short_tmp}/http.sock"
    app = AppProcess(
        [sys.executable, "-m", "uvicorn", "--uds", http, "djangoapp.asgi:application"],
        node=node,
        env=django_env(short_tmp),
        cwd=DJANGOAPP,
        ready_line=None,
    )
    try:
        waited = run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE))
        assert waited.returncode == 0, waited.stderr + app.stderr()
        assert info(node)["pid"] == app.proc.pid
        assert http_get(http, "/polls/")[0] == 503
        assert rpc_result(node, "django.migrate") == ALL_MIGRATIONS
        assert http_get(http, "/polls/") == (200, {"questions": [QUESTION]})
        # Django closes a request's connection just after the response has left; the
        # agent's task closed its own when it ended.
        wait_until(lambda: open_files(app.proc.pid, "db.sqlite3") == [], what="no open connection")
        app.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: no exit handler runs, and
        # the socket file stays behind, stale (the next agent on the node replaces it).
        assert app.proc.wait(timeout=DEADLINE) in (0, -signal.SIGTERM)
        assert run_rpcctl("-n", node, "ping").returncode == 3
    finally:
        app.close()


def test_allowed_commands_run_and_others_are_refused(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    app, _ = start_gunicorn(short_tmp, node, workers=1)
    try:
        shown = run_rpcctl("-n", node, "rpc", 'django.call_command("showmigrations", "polls")')
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == "polls\n [ ] 0001_initial\n [ ] 0002_first_question\n"
        refused = run_rpcctl("-n", node, "rpc", 'django.call_command("flush")')
        assert refused.returncode == 2
        assert refused.stdout == ""
        assert (
            "rpcctl: error: django.call_command: the management command 'flush' is not "
            "allowed remotely; RPCCTL_DJANGO_COMMANDS allows: migrate, showmigrations, check"
        ) in refused.stderr
        # migrate goes through django.migrate, which holds the lock.
        bypass = run_rpcctl("-n", node, "rpc", 'django.call_command("migrate")')
        assert bypass.returncode == 2
        assert "run migrate as django.migrate(app_label, migration_name)" in bypass.stderr
        not_a_name = run_rpcctl("-n", node, "rpc", "django.call_command(3)")
        assert not_a_name.returncode == 2
        assert "name must be a management command's name, got 3" in not_a_name.stderr
        unknown = run_rpcctl("-n", node, "rpc", 'django.call_command("nosuchcommand")')
        assert unknown.returncode == 2
        assert "'nosuchcommand' is not allowed remotely" in unknown.stderr
        # Nothing ran: the database is still empty.
        assert rpc_result(node, "django.showmigrations")["polls"]["applied"] == []
        assert rpc_result(node, 'django.migrate("polls", "0001_initial")') == ["polls.0001_initial"]
        assert rpc_result(node, "django.showmigrations")["polls"] == {
            "applied": ["0001_initial"],
            "pending": ["0002_first_question"],
        }
        missing = run_rpcctl("-n", node, "rpc", 'django.migrate(migration_name="0001_initial")')
        assert missing.returncode == 1
        assert "migration_name needs app_label" in missing.stderr
    finally:
        app.close()


def test_a_narrower_allow_list(short_tmp: Path) -> None:
    """RPCCTL_DJANGO_COMMANDS also decides which of the ready-made tasks exist."""
    settings = write_settings(
        short_tmp, "narrow", 'RPCCTL_DJANGO_COMMANDS = ["check", "diffsettings"]'
    )
    node = f"unix:{short_tmp}/agent.sock"
    app, _ = start_gunicorn(short_tmp, node, workers=1, DJANGO_SETTINGS_MODULE=settings)
    try:
        names = {
            t["name"]
            for t in json.loads(run_rpcctl("-n", node, "tasks", "--json").stdout)["result"]
        }
        assert names == {"django.check", "django.call_command"}
        gone = run_rpcctl("-n", node, "rpc", "django.migrate")
        assert gone.returncode == 6
        listed = run_rpcctl("-n", node, "rpc", 'django.call_command("diffsettings", all=True)')
        assert listed.returncode == 0, listed.stderr
        assert "RPCCTL_DJANGO_COMMANDS = ['check', 'diffsettings']" in listed.stdout
        refused = run_rpcctl("-n", node, "rpc", 'django.call_command("showmigrations")')
        assert refused.returncode == 2
        assert "RPCCTL_DJANGO_COMMANDS allows: check, diffsettings" in refused.stderr
    finally:
        app.close()
