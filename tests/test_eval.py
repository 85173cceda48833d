"""`rpcctl eval` (and `bin/NAME eval`): a registered task in a fresh process, app up or down."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app_agent import wire
from conftest import (
    APPS,
    DEADLINE,
    EXAMPLE,
    SAMPLEAPP,
    AppProcess,
    rpcctl_executable,
    run_rpcctl,
    start_myapp,
    wait_until,
)

EVALTASKS = """
import os
import sys
import time

import app_agent
from app_agent import task


@task
def started_then_cancellable(seconds: float = 60.0) -> str:
    print("started", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if app_agent.cancelled():
            print("cancelled, stopping")
            return "stopped"
        time.sleep(0.01)
    return "finished"


@task(name="where_am_i")
def where() -> dict:
    return {
        "cwd": os.getcwd(),
        "python": sys.executable,
        "pid": os.getpid(),
        "app": os.environ.get("RPCCTL_APP"),
        "node": os.environ.get("RPCCTL_NODE"),
        "extra": os.environ.get("EVAL_EXTRA"),
        "locks": os.environ.get("RPCCTL_LOCKS"),
        "agent": app_agent.current() is not None,
    }


def not_a_task(marker: str = "ran") -> str:
    with open(marker, "w") as f:
        f.write("it ran")
    return "ran"
"""

STARTS_THE_APP = """
import app_agent
from app_agent import task

agent = app_agent.start()  # at import: not allowed for a task module


@task
def f() -> int:
    return 1
"""


class EvalRelease:
    """A release directory whose tasks are tests/apps/sampleapp.py's and evaltasks.py's."""

    def __init__(self, root: Path, app_toml: str = "") -> None:
        self.root = root
        (root / "evaltasks.py").write_text(EVALTASKS)
        (root / "startsapp.py").write_text(STARTS_THE_APP)
        (root / "broken.py").write_text('raise RuntimeError("no settings here")\n')
        (root / "needsdep.py").write_text("import nosuchdependency  # noqa\n")
        self.locks = root / "locks"
        self.config = root / "rpcctl.toml"
        self.config.write_text(
            "[app]\n"
            'name = "evalrel"\n'
            'command = ["python", "-c", "pass"]\n'
            f'env = {{ PYTHONPATH = "{APPS}", EVAL_EXTRA = "from [app] env" }}\n'
            'locks = "file:locks"\n'
            'tasks = ["evaltasks"]\n' + textwrap.dedent(app_toml)
        )

    def eval(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_rpcctl("--config", str(self.config), "eval", *args, env=env)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [rpcctl_executable(), "--config", str(self.config), "eval", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")},
        )


@pytest.fixture
def release(short_tmp: Path) -> EvalRelease:
    return EvalRelease(short_tmp)


def read_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """stdout lines of *proc* up to the one containing *text* (the deadline is the test's)."""
    assert proc.stdout is not None
    seen: list[str] = []
    while True:
        line = proc.stdout.readline()
        if not line:
            _out, err = proc.communicate(timeout=DEADLINE)
            pytest.fail(f"{text!r} never came; stdout {seen}, stderr:\n{err}")
        seen.append(line)
        if text in line:
            return seen


def stopped_pid(stderr: str) -> int:
    found = re.search(r"its process \(pid (\d+)\)|the task's process \(pid (\d+)\)", stderr)
    assert found, stderr
    return int(found.group(1) or found.group(2))


# -- the example app, down ----------------------------------------------------------------


def copy_example(dest: Path) -> Path:
    shutil.copytree(
        EXAMPLE, dest, ignore=shutil.ignore_patterns("run", "var", "__pycache__", "*.db")
    )
    return dest


def launcher_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env.pop("VIRTUAL_ENV", None)
    # bin/myapp finds rpcctl on PATH (the copy was not made by `release init`).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env["DATABASE_URL"] = database_url
    env["MYAPP_HTTP"] = "127.0.0.1:0"
    return env


def test_eval_migrates_the_example_app_with_the_app_down(short_tmp: Path) -> None:
    root = copy_example(short_tmp / "myapp")
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{short_tmp}/myapp.db"
    env = launcher_env(url)

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(root / "bin" / "myapp"), *args],
            cwd=elsewhere,  # the launcher finds its release, and eval runs the task there
            capture_output=True,
            text=True,
            env=env,
            timeout=DEADLINE * 3,
            check=False,
        )

    migrated = launch("eval", "myapp.tasks.migrate")
    assert migrated.returncode == 0, migrated.stderr
    # Alembic's own lines stream back on stderr, the result is printed as rpc prints it.
    assert "Running upgrade  -> 0001, create the notes table" in migrated.stderr
    assert "Running upgrade 0001 -> 0002, add tags to notes" in migrated.stderr
    assert json.loads(migrated.stdout) == [
        "0001: create the notes table",
        "0002: add tags to notes",
    ]
    # [app] locks is shared: no warning that the lock is this process's only.
    assert "warning" not in migrated.stderr
    engine = sa.create_engine(url)
    try:
        assert {"notes", "alembic_version"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    # No agent, no socket: the app was never started.
    assert not (root / "run" / "myapp.sock").exists()
    assert launch("ping").returncode == 3

    # An alias, found through [app] tasks; nothing left to do.
    again = launch("eval", "--json", "migrate")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1]) == {"ok": True, "result": []}
    current = launch("eval", "myapp.tasks.current")
    assert json.loads(current.stdout)["revision"] == "0002"

    # The app, started on that database, finds it migrated.
    app = start_myapp(short_tmp, database_url=url)
    try:
        live = app.rpcctl("rpc", "myapp.tasks.current", "--json")
        assert json.loads(live.stdout)["result"]["up_to_date"] is True
    finally:
        app.close()


# -- output --------------------------------------------------------------------------------


def test_output_streams_live_as_rpc_shows_it(release: EvalRelease, short_tmp: Path) -> None:
    gate = short_tmp / "gate"
    proc = release.spawn(f'sampleapp.chatty(3, 0, "{gate}")')
    try:
        # Lines 1 and 2 arrive while the task waits for the gate before line 3: streamed.
        assert read_until(proc, "line 2") == ["line 1\n", "line 2\n"]
        gate.touch()
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "line 3\n3\n"
    assert "to stderr" in err.splitlines()
    assert "WARNING sampleapp.chatty: logged at warning" in err
    assert "progress: 2/3 step 2" in err  # not a terminal: progress as lines


def test_json_events_and_envelope(release: EvalRelease) -> None:
    ok = release.eval("--json", "sampleapp.chatty(2)")
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [e["line"] for e in lines if e.get("type") == "stdout"] == ["line 1", "line 2"]
    assert [e["done"] for e in lines if e.get("type") == "progress"] == [1, 2]
    assert lines[-1] == {"ok": True, "result": 2}
    failed = release.eval("--json", 'sampleapp.boom("bad")')
    assert failed.returncode == 1
    envelope = json.loads(failed.stdout.splitlines()[-1])
    assert envelope["ok"] is False
    assert envelope["error"]["kind"] == "task_failed"
    assert envelope["error"]["exit_code"] == 1
    assert envelope["error"]["type"] == "ValueError"
    assert "ValueError: bad" in envelope["error"]["traceback"]


def test_results_print_as_rpc_prints_them(release: EvalRelease) -> None:
    assert release.eval('sampleapp.echo("plain text")').stdout == "plain text\n"
    assert release.eval("sampleapp.echo(None)").stdout == ""
    weird = release.eval("sampleapp.weird")
    assert json.loads(weird.stdout) == {
        "when": "2026-01-02T03:04:05",
        "set": [1, 2, 3],
        "bytes": {"base64": "/wA="},
        "object": "<Plain>",
        "tuple": [1, 2],
    }


# -- exit codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "code", "message"),
    [
        ('sampleapp.boom("bad")', 1, "rpcctl: error: sampleapp.boom raised ValueError: bad"),
        ("sampleapp.exit_app", 1, "rpcctl: error: sampleapp.exit_app raised SystemExit: 3"),
        (
            'sampleapp.echo(os.system("id"))',
            2,
            "rpcctl: error: bad expression at 'os.system(\"id\")': argument 1 must be a literal",
        ),
        (
            "sampleapp.add(1, 2, 3)",
            2,
            "rpcctl: error: sampleapp.add: too many positional arguments; the signature is "
            "sampleapp.add(a: int, b: int = 0, *, scale: int = 1) -> int",
        ),
        (
            "sampleapp.ech",
            6,
            "rpcctl: error: no task named 'sampleapp.ech' (did you mean sampleapp.echo?): "
            "sampleapp registers no task of that name",
        ),
        (
            "nosuchmodule.f",
            6,
            "rpcctl: error: no task named 'nosuchmodule.f': no module of that name imports",
        ),
        (
            "nosuchalias",
            6,
            "rpcctl: error: no task named 'nosuchalias': an alias is found only when its "
            "module is listed in [app] tasks of rpcctl.toml",
        ),
        (
            "sampleapp.limited(5)",
            4,
            "rpcctl: error: sampleapp.limited exceeded its timeout of 0.3s; cancellation "
            "was requested",
        ),
    ],
)
def test_exit_codes_are_rpcs(
    release: EvalRelease, expression: str, code: int, message: str
) -> None:
    result = release.eval(expression)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert result.stderr.count("rpcctl: error:") == 1


def test_a_task_module_that_fails_to_import_is_the_apps_code_raising(
    release: EvalRelease,
) -> None:
    broken = release.eval("broken.f")
    assert broken.returncode == 1
    assert "RuntimeError: no settings here" in broken.stderr  # the traceback
    assert broken.stderr.endswith(
        "rpcctl: error: importing broken (for broken.f) raised RuntimeError: no settings here\n"
    )
    # A module that exists but lacks a dependency is not "no such task".
    missing = release.eval("needsdep.f")
    assert missing.returncode == 1
    assert (
        "importing needsdep (for needsdep.f) raised ModuleNotFoundError: "
        "No module named 'nosuchdependency'" in missing.stderr
    )


def test_a_raised_task_shows_its_traceback(release: EvalRelease) -> None:
    result = release.eval('sampleapp.boom("bad")')
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert "raise ValueError(message)" in result.stderr


def test_two_words_and_a_node_are_usage_errors(release: EvalRelease, short_tmp: Path) -> None:
    words = release.eval("sampleapp.add", "1")
    assert words.returncode == 2
    assert "quote it: rpcctl eval 'sampleapp.add(1)'" in words.stderr
    node = run_rpcctl("-n", f"unix:{short_tmp}/x.sock", "eval", "sampleapp.echo")
    assert node.returncode == 2
    assert "it takes no --node" in node.stderr


def test_an_unregistered_function_is_never_run(release: EvalRelease, short_tmp: Path) -> None:
    marker = short_tmp / "marker"
    result = release.eval(f'evaltasks.not_a_task("{marker}")')
    assert result.returncode == 6
    assert result.stderr == (
        "rpcctl: error: evaltasks.not_a_task is not a registered task: eval runs only "
        "functions marked @task (it is not a way to run arbitrary code)\n"
    )
    assert not marker.exists()
    # A module's other attributes are no tasks either.
    assert release.eval("os.getcwd").returncode == 6
    assert release.eval("sampleapp.main").returncode == 6


def test_a_task_module_that_starts_the_app_is_refused(
    release: EvalRelease, short_tmp: Path
) -> None:
    socket_path = short_tmp / "run" / "agent.sock"
    result = release.eval("startsapp.f", env={"RPCCTL_NODE": f"unix:{socket_path}"})
    assert result.returncode == 2
    assert (
        "rpcctl: error: importing startsapp: app_agent.start() was called while " in result.stderr
    )
    assert "a task module must be importable on its own" in result.stderr
    assert not socket_path.exists()


def test_the_release_python_environment_and_directory(short_tmp: Path) -> None:
    wrapper = short_tmp / "bin" / "py"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\necho used >> "{short_tmp}/py.log"\nexec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    release = EvalRelease(short_tmp, 'python = "bin/py"\n')
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    result = run_rpcctl(
        "--config",
        str(release.config),
        "eval",
        "where_am_i",
        "--json",
        cwd=elsewhere,
        env={"RPCCTL_NODE": "unix:/nonexistent/agent.sock"},
    )
    assert result.returncode == 0, result.stderr
    where = json.loads(result.stdout)["result"]
    assert where == {
        "cwd": str(short_tmp),
        "python": sys.executable,
        "pid": where["pid"],
        "app": "evalrel",
        "node": None,  # no agent here: the node is not handed over
        "extra": "from [app] env",
        "locks": f"file:{short_tmp}/locks",
        "agent": False,
    }
    assert (short_tmp / "py.log").read_text() == "used\n"


def test_without_a_config_it_runs_in_the_current_directory(short_tmp: Path) -> None:
    (short_tmp / "evaltasks.py").write_text(EVALTASKS)
    result = run_rpcctl("eval", "evaltasks.where", "--json", cwd=short_tmp)
    assert result.returncode == 0, result.stderr
    where = json.loads(result.stdout)["result"]
    assert where["cwd"] == str(short_tmp)
    assert where["app"] is None


def test_a_missing_interpreter_is_a_usage_error(short_tmp: Path) -> None:
    release = EvalRelease(short_tmp, 'python = "bin/nothing"\n')
    result = release.eval("evaltasks.where")
    assert result.returncode == 2
    assert f"cannot run [app] python {short_tmp}/bin/nothing" in result.stderr


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('tasks = "myapp.tasks"', "[app] tasks: got 'myapp.tasks'; expected the modules"),
        ('tasks = ["not a module"]', "[app] tasks: got ['not a module']"),
        ("python = 3", "[app] python: got 3"),
        ('locks = "redis://x"', "[app] locks: got 'redis://x'; expected where task locks"),
    ],
)
def test_bad_eval_settings_are_usage_errors(short_tmp: Path, line: str, problem: str) -> None:
    release = EvalRelease(short_tmp)
    text = release.config.read_text().replace('locks = "file:locks"\n', "")
    release.config.write_text(text.replace('tasks = ["evaltasks"]', line))
    result = release.eval("evaltasks.where")
    assert result.returncode == 2
    assert problem in result.stderr


def test_the_runner_hands_the_locks_to_the_app(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpcctl.release import config
    from rpcctl.release.runner import Runner

    release = EvalRelease(short_tmp)
    monkeypatch.delenv("RPCCTL_LOCKS", raising=False)
    runner = Runner(config.load(release.config), structlog_logger())
    assert runner._environment()["RPCCTL_LOCKS"] == f"file:{short_tmp}/locks"
    # The deployment's own setting beats the release's default, for the app and for eval.
    monkeypatch.setenv("RPCCTL_LOCKS", f"file:{short_tmp}/elsewhere")
    assert runner._environment()["RPCCTL_LOCKS"] == f"file:{short_tmp}/elsewhere"
    result = release.eval("where_am_i", "--json", env={"RPCCTL_LOCKS": f"file:{short_tmp}/e"})
    assert json.loads(result.stdout)["result"]["locks"] == f"file:{short_tmp}/e"


def structlog_logger() -> Any:
    import structlog

    return structlog.get_logger("test")


# -- stopping ----------------------------------------------------------------------------------


def test_timeout_stops_the_tasks_process(release: EvalRelease) -> None:
    result = release.eval("--timeout", "1", "evaltasks.started_then_cancellable(60)")
    assert result.returncode == 4
    assert "rpcctl: error: evaltasks.started_then_cancellable did not finish within 1s" in (
        result.stderr
    )
    assert "eval runs a task in a process of its own, which a timeout ends" in result.stderr
    assert not wire.pid_alive(stopped_pid(result.stderr))


def test_a_task_past_its_own_timeout_ends_the_process(
    release: EvalRelease, short_tmp: Path
) -> None:
    # stubborn never checks cancellation: the process must not wait for it.
    result = release.eval(f'sampleapp.stubborn("{short_tmp}/never")')
    assert result.returncode == 4
    assert "sampleapp.stubborn exceeded its timeout of 0.3s" in result.stderr


def test_ctrl_c_stops_the_tasks_process(release: EvalRelease) -> None:
    proc = release.spawn("evaltasks.started_then_cancellable(60)")
    try:
        read_until(proc, "started")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "rpcctl: interrupted; the task's process (pid " in err
    assert "cancelled, stopping" in out  # asked to stop, it did
    assert not wire.pid_alive(stopped_pid(err))


def test_sigterm_cancels_the_task(release: EvalRelease) -> None:
    proc = release.spawn("evaltasks.started_then_cancellable(60)")
    try:
        read_until(proc, "started")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "cancelled, stopping" in out
    assert "rpcctl: error: evaltasks.started_then_cancellable was cancelled" in err


# -- locks shared with a live replica ------------------------------------------------------------


def live_replica(short_tmp: Path, locks: str) -> AppProcess:
    return AppProcess(
        SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock", env={"SAMPLEAPP_LOCKS": locks}
    )


def check_locks_shared(release: EvalRelease, app: AppProcess) -> None:
    holder = app.rpcctl("rpc", "--detach", "sampleapp.locked(120)").stdout.strip()
    wait_until(lambda: "holding the lock" in app.rpcctl("logs", holder).stdout)

    busy = release.eval("sampleapp.locked(0)")
    assert busy.returncode == 7, busy.stderr
    assert f"rpcctl: error: lock 'sample-lock' is held by job {holder} (sampleapp.locked, " in (
        busy.stderr
    )
    assert f"pid {app.proc.pid}) since " in busy.stderr  # where the holder runs
    assert "; to wait for it instead, add --lock-wait SECONDS" in busy.stderr
    assert "holding the lock" not in busy.stdout  # it never ran

    waiter = release.spawn("--lock-wait", str(DEADLINE), "sampleapp.locked(0)")
    try:
        assert waiter.poll() is None
        assert app.rpcctl("cancel", holder).returncode == 0
        out, err = waiter.communicate(timeout=DEADLINE * 2)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err
    assert out == "holding the lock\nreleased\n"

    # The other way round: the live replica finds the eval's lock held, named as eval's.
    evaluating = release.spawn("sampleapp.locked(120)")
    try:
        read_until(evaluating, "holding the lock")
        live = app.rpcctl("rpc", "sampleapp.locked(0)")
        assert live.returncode == 7
        assert "(sampleapp.locked, called by rpcctl eval uid=" in live.stderr
        evaluating.send_signal(signal.SIGINT)
        evaluating.communicate(timeout=DEADLINE)
    finally:
        if evaluating.poll() is None:
            evaluating.kill()
            evaluating.communicate()
    # The eval's process is gone, and its lock with it.
    after = app.rpcctl("rpc", "sampleapp.locked(0)")
    assert after.returncode == 0, after.stderr


def test_a_lock_held_by_a_live_replica_is_honoured(short_tmp: Path) -> None:
    release = EvalRelease(short_tmp)
    app = live_replica(short_tmp, f"file:{short_tmp}/locks")
    try:
        check_locks_shared(release, app)
    finally:
        app.close()


@pytest.mark.pg
def test_a_postgres_lock_held_by_a_live_replica_is_honoured(
    short_tmp: Path,
    pg_server: str,
) -> None:
    release = EvalRelease(short_tmp)
    release.config.write_text(
        release.config.read_text().replace('locks = "file:locks"', f'locks = "{pg_server}"')
    )
    app = live_replica(short_tmp, pg_server)
    try:
        check_locks_shared(release, app)
    finally:
        app.close()


def test_a_lock_only_this_process_sees_is_warned_about(short_tmp: Path) -> None:
    release = EvalRelease(short_tmp)
    release.config.write_text(release.config.read_text().replace('locks = "file:locks"\n', ""))
    result = release.eval("sampleapp.locked(0)")
    assert result.returncode == 0, result.stderr
    assert (
        "rpcctl: warning: sampleapp.locked's lock 'sample-lock' is held in this process only "
        "(no lock backend configured): a running app would not see it" in result.stderr
    )
    # RPCCTL_LOCKS in the operator's environment counts as configured.
    shared = release.eval("sampleapp.locked(0)", env={"RPCCTL_LOCKS": f"file:{short_tmp}/l"})
    assert "warning" not in shared.stderr


# -- the Kubernetes recipe -------------------------------------------------------------------


@pytest.mark.pg
def test_the_kubernetes_eval_recipe_migrates_with_its_own_command(
    short_tmp: Path,
    pg_database: str,
) -> None:
    """The Job's command and environment as written (the Secret's URL: a fresh database),
    with /srv/myapp standing for a copy of the example release; no app runs."""
    import yaml

    recipe = EXAMPLE.parent / "deploy" / "kubernetes" / "myapp-migrate-eval.yaml"
    [job] = list(yaml.safe_load_all(recipe.read_text()))
    assert job["kind"] == "Job"
    [container] = job["spec"]["template"]["spec"]["containers"]
    root = copy_example(short_tmp / "srv" / "myapp")
    argv = [a.replace("/srv/myapp", str(root)) for a in container["command"]]
    assert argv[1:] == ["eval", "--lock-wait", "300", "myapp.tasks.migrate"]
    env = launcher_env(pg_database)
    for variable in container["env"]:
        assert variable["valueFrom"]["secretKeyRef"] == {"name": "myapp-database", "key": "url"}
        env[variable["name"]] = pg_database
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=DEADLINE * 3, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "0001: create the notes table",
        "0002: add tags to notes",
    ]
    assert "warning" not in result.stderr  # the lock is PostgreSQL's, shared
    assert not (root / "run" / "myapp.sock").exists()


def test_eval_in_a_pre_start_hook(short_tmp: Path) -> None:
    """Before the app starts, a hook migrates with eval: the runner's hook environment (its
    node, its runner pid) does not make eval think it is the app."""
    release = EvalRelease(short_tmp)
    release.config.write_text(
        release.config.read_text().replace(
            'command = ["python", "-c", "pass"]',
            f"command = [{json.dumps(sys.executable)}, {json.dumps(str(APPS / 'sampleapp.py'))}]",
        )
        + 'node = "unix:run/app.sock"\n'
    )
    hook = short_tmp / "rel" / "hooks" / "pre_start" / "10-eval.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text('"$RPCCTL" eval where_am_i --json > "$RPCCTL_ROOT/eval.json"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    runner = subprocess.Popen(
        [rpcctl_executable(), "--config", str(release.config), "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ping = run_rpcctl("--config", str(release.config), "ping", "--wait", str(DEADLINE))
        assert ping.returncode == 0, ping.stderr
        stop = run_rpcctl("--config", str(release.config), "stop")
        assert stop.returncode == 0, stop.stderr
        _out, err = runner.communicate(timeout=DEADLINE)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 0, err
    where = json.loads((short_tmp / "eval.json").read_text())["result"]
    assert (where["cwd"], where["node"], where["agent"]) == (str(short_tmp), None, False)
    assert where["locks"] == f"file:{short_tmp}/locks"
