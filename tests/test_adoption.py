"""What a newcomer's own app tripped over (issue #23), through the real executable, real
app processes and a real bin/NAME launcher."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEADLINE, SAMPLEAPP, AppProcess, rpcctl_executable, run_rpcctl
from rpcctl.release import scaffold


class Launcher:
    """A release made by `release init`, its app tests/apps/sampleapp.py, run as typed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        scaffold.init("shop", root, module="sampleapp", launcher_rpcctl=rpcctl_executable())
        command = ", ".join(json.dumps(part) for part in SAMPLEAPP)
        (root / "rpcctl.toml").write_text(
            f'[app]\nname = "shop"\ncommand = [{command}]\nnode = "unix:run/shop.sock"\n'
        )
        self.node = f"unix:{root}/run/shop.sock"

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`bin/shop ARGS` typed in the release root."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "_RPCCTL"))}
        return subprocess.run(
            ["bin/shop", *args],
            cwd=self.root,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=DEADLINE * 3,
            check=False,
        )


@pytest.fixture
def shop(short_tmp: Path) -> Launcher:
    return Launcher(short_tmp)


# -- 7. usage errors through bin/NAME name bin/NAME -------------------------------------------


def test_usage_errors_through_the_launcher_name_the_launcher(shop: Launcher) -> None:
    missing = shop("rpc")
    assert missing.returncode == 2
    assert missing.stderr.startswith("Usage: bin/shop rpc [OPTIONS] EXPR\n")
    assert "Try 'bin/shop rpc --help' for help." in missing.stderr
    unknown = shop("ping", "--bogus")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("Usage: bin/shop ping [OPTIONS]\n")
    assert "rpcctl" not in unknown.stderr


def test_usage_errors_of_plain_rpcctl_name_rpcctl(short_tmp: Path) -> None:

    result = run_rpcctl("rpc", cwd=short_tmp)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: rpcctl rpc [OPTIONS] EXPR\n")


# -- 8. the small ones -------------------------------------------------------------------------


def test_counts_of_one_read_as_one() -> None:
    from app_agent.wire.words import plural
    from rpcctl import _flamegraph
    from rpcctl import _introspect_render as render
    from rpcctl.fleet import MulticallResult, Outcome

    check = {"name": "db", "ok": True, "duration_s": 0.001, "message": ""}
    assert render.health([check]).endswith("\nhealthy: 1 check passed\n")
    assert render.health_line({"checks": [check]}) == "healthy: 1 check passed"
    failing = {**check, "ok": False}
    assert render.health([failing]).endswith("\nunhealthy: 1 of 1 check failed\n")
    assert render.health([check, failing]).endswith("\nunhealthy: 1 of 2 checks failed\n")
    thread = {"idle": True, "name": "rpcctl-agent", "main": False, "frames": [], "agent": True}
    thread |= {"ident": 1, "daemon": True, "frames_cut": 0}
    header = render.stack({"pid": 1, "app": "a", "python": "3.12", "threads": [thread]})
    assert header.startswith("Process 1 (a), Python 3.12: 1 thread, 1 idle agent thread folded")
    fleet = MulticallResult([Outcome("unix:/a.sock", "pong")], duration=0.5)
    assert fleet.summary() == "1/1 node ok in 0.50s"
    profile = {"samples": 1, "rate": 100.0, "seconds": 1.0}
    assert _flamegraph.title_of(profile, "app") == "app: 1 sample at 100 Hz over 1 s"
    assert (plural(0, "check"), plural(2, "check"), plural(1_000, "entry", "entries")) == (
        "0 checks",
        "2 checks",
        "1,000 entries",
    )


@pytest.mark.parametrize("command", [["ping"], ["rpc", "sampleapp.echo"]])
def test_a_bare_socket_path_as_node_suggests_unix_path(short_tmp: Path, command: list[str]) -> None:

    path = f"{short_tmp}/run/app.sock"
    result = run_rpcctl("-n", path, *command)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"rpcctl: error: bad node address {path!r}: expected unix:PATH, tcp://HOST:PORT or "
        f"tls://HOST:PORT; for the UNIX socket at that path, write unix:{path}\n"
    )
    tcp = run_rpcctl("-n", "127.0.0.1:7000", *command)
    assert tcp.returncode == 2
    assert tcp.stderr.endswith("; for TCP, write tcp://127.0.0.1:7000\n")


@pytest.mark.parametrize(
    ("argument", "pointed", "why"),
    [
        (
            "1e400",
            "1e400",
            "it is beyond a float's range (about 1.8e308), and JSON has no infinity",
        ),
        (
            "[-1e400]",
            "-1e400",
            "it is beyond a float's range (about 1.8e308), and JSON has no infinity",
        ),
        ("nan", "nan", "JSON has no infinity or NaN"),
        ("-Infinity", "-Infinity", "JSON has no infinity or NaN"),
    ],
)
def test_a_number_that_is_not_finite_says_so(
    sample_app: AppProcess, argument: str, pointed: str, why: str
) -> None:
    result = sample_app.rpcctl("rpc", f"sampleapp.echo({argument})")
    assert (result.returncode, result.stdout) == (2, "")
    first = result.stderr.splitlines()[0]
    assert (
        first
        == f"rpcctl: error: bad expression at {pointed!r}: argument 1 is not a finite number: {why}"
    )
    # Nothing reached the app: no job was started.
    assert "sampleapp.echo" not in sample_app.rpcctl("jobs").stdout


# -- 4. an app with no tasks says how to register them ----------------------------------------

BARE_APP = """
import threading
import app_agent

app_agent.start(app="bare")
print("READY", flush=True)
threading.Event().wait()
"""


def test_an_app_without_tasks_says_how_to_register_them(short_tmp: Path) -> None:
    app = AppProcess([sys.executable, "-c", BARE_APP], node=f"unix:{short_tmp}/run/bare.sock")
    try:
        called = app.rpcctl("rpc", "myapp.tasks.migrate")
        assert (called.returncode, called.stdout) == (6, "")
        assert called.stderr == (
            "rpcctl: error: no task named 'myapp.tasks.migrate': this app registers no tasks; "
            "mark functions with @task (from app_agent import task) and name their modules in "
            'app_agent.start(tasks=["myapp.tasks"])\n'
        )
        listed = app.rpcctl("tasks")
        assert (listed.returncode, listed.stdout) == (0, "")
        assert listed.stderr == (
            "no tasks registered: mark functions with @task (from app_agent import task) and "
            'name their modules in app_agent.start(tasks=["myapp.tasks"])\n'
        )
        assert json.loads(app.rpcctl("tasks", "--json").stdout) == {"ok": True, "result": []}
    finally:
        app.close()


def test_an_identity_that_may_run_no_task_is_not_told_to_register_some(short_tmp: Path) -> None:
    cookie = short_tmp / "reader.cookie"
    cookie.write_text("reader-cookie-0123456789abcdef\n")
    access = short_tmp / "access.toml"
    access.write_text(f'[identity.reader]\ncookie_file = "{cookie}"\nallow = ["read"]\n')
    for path in (cookie, access):
        path.chmod(0o600)
    app = AppProcess(
        SAMPLEAPP, node=f"unix:{short_tmp}/run/a.sock", env={"RPCCTL_ACCESS": str(access)}
    )
    try:
        listed = app.rpcctl("--identity", "reader", "--cookie-file", str(cookie), "tasks")
        assert (listed.returncode, listed.stdout) == (0, "")
        assert listed.stderr == "no tasks registered that identity 'reader' may run\n"
    finally:
        app.close()


# -- 6. global options after the command too --------------------------------------------------


@pytest.fixture
def cli_runner(monkeypatch: pytest.MonkeyPatch) -> object:
    from click.testing import CliRunner

    for name in [n for n in os.environ if n.startswith("RPCCTL_")]:
        monkeypatch.delenv(name)
    return CliRunner()


def test_global_options_after_the_command(
    cli_runner: object, agent_in_process: object, short_tmp: Path
) -> None:
    from click.testing import CliRunner

    from rpcctl.cli import cli

    assert isinstance(cli_runner, CliRunner)
    node = agent_in_process.node  # type: ignore[attr-defined]

    def run(*args: str) -> tuple[int, str, str]:
        result = cli_runner.invoke(cli, list(args))
        return result.exit_code, result.stdout, result.stderr

    assert run("ping", "-n", node) == (0, "pong\n", "")
    assert run("ping", "--node", node, "--json")[1].startswith('{"ok": true, "result": "pong"')
    assert run("rpc", "sampleapp.echo", "-n", node) == (0, "", "")  # None prints nothing
    assert run("rpc", "-n", node, 'sampleapp.echo("x")') == (0, "x\n", "")
    config = short_tmp / "rpcctl.toml"
    config.write_text(f'[app]\nname = "inproc"\ncommand = ["true"]\nnode = "{node}"\n')
    assert run("tasks", "--json", "--config", str(config))[0] == 0
    assert run("info", f"--config={config}")[0] == 0
    # Nodes add up wherever they are given: a fleet of two, one of them down.
    down = f"unix:{short_tmp}/down.sock"
    code, out, _err = run("-n", node, "ping", "-n", down)
    assert code == 3
    assert out.splitlines()[-1].startswith("1/2 nodes ok")
    listing = short_tmp / "nodes.txt"
    listing.write_text(f"{node}\n")
    assert run("ping", "--nodes-file", str(listing))[1].splitlines()[-1].startswith("1/1 node ok")
    # The credentials and TLS options too, with what they mean before the command.
    missing = short_tmp / "missing.cookie"
    code, _out, err = run("ping", "-n", node, "--cookie-file", str(missing))
    assert (code, err) == run("-n", node, "--cookie-file", str(missing), "ping")[::2]
    assert code == 2
    assert "bad identity" in run("ping", "-n", node, "--identity", "-x")[2]
    assert run("ping", "-n", node, "--tls-ca", str(missing))[0] == 0  # only tls:// reads it
    # Still one clear usage error for an option no command has.
    assert run("ping", "--nodes", node)[0] == 2


def test_ping_with_options_after_it_through_the_executable(sample_app: AppProcess) -> None:
    config = Path(sample_app.node[len("unix:") :]).parent / "rpcctl.toml"
    config.write_text(f'[app]\nname = "s"\ncommand = ["true"]\nnode = "{sample_app.node}"\n')
    for args in (
        ["ping", "-n", sample_app.node],
        ["ping", "--wait", "5", "--node", sample_app.node, "--ready"],
        ["ping", "--config", str(config), "--timeout", "3"],
        ["ping", "-n", sample_app.node, "--json"],  # through click
    ):
        result = run_rpcctl(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith(("pong\n", '{"ok": true, "result": "pong"')), args


# -- 5. release init says what to do next ------------------------------------------------------


def test_release_init_prints_the_next_steps(short_tmp: Path) -> None:
    result = run_rpcctl("release", "init", "shop", cwd=short_tmp)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"wrote {short_tmp}/rpcctl.toml\n"
        f"wrote {short_tmp}/bin/shop\n"
        f"wrote {short_tmp}/rel/hooks/post_start/10-migrate.sh\n"
        "\n"
        "Next steps:\n"
        "  1. Write your release tasks in shop/tasks.py, each marked @task (from app_agent import\n"
        "     task): the post_start hook (rel/hooks/post_start/10-migrate.sh) calls\n"
        "     shop.tasks.migrate.\n"
        "  2. Start the agent in your app's entry point (python -m shop) with\n"
        '     app_agent.start(tasks=["shop.tasks"]) and no node: bin/shop start gives it\n'
        "     RPCCTL_NODE. On SIGTERM, stop serving and call agent.stop().\n"
        "  3. bin/shop start    (in the foreground: the app, then the post_start hook)\n"
        "  4. bin/shop ping     (from another terminal)\n"
        "  5. bin/shop rpc shop.tasks.migrate\n"
    )
    again = run_rpcctl(
        "release", "init", "shop", "--force", "--module", "shopapp", "--json", cwd=short_tmp
    )
    assert again.returncode == 0, again.stderr
    steps = json.loads(again.stdout)["result"]["next_steps"]
    assert steps[0].startswith("Write your release tasks in shopapp/tasks.py")
    assert steps[-1] == "bin/shop rpc shopapp.tasks.migrate"


def test_release_init_json_carries_the_next_steps(short_tmp: Path) -> None:
    result = run_rpcctl("release", "init", "shop", "--json", cwd=short_tmp)
    steps = json.loads(result.stdout)["result"]["next_steps"]
    assert steps[-3:] == [
        "bin/shop start    (in the foreground: the app, then the post_start hook)",
        "bin/shop ping     (from another terminal)",
        "bin/shop rpc shop.tasks.migrate",
    ]


def test_release_init_in_a_django_project_releases_the_site(short_tmp: Path) -> None:
    import shutil
    import signal

    from conftest import ROOT, wait_until

    example = ROOT / "examples" / "djangoapp"
    for part in ("djangoapp", "polls"):
        shutil.copytree(example / part, short_tmp / part)
    shutil.copy(example / "manage.py", short_tmp)
    result = run_rpcctl("release", "init", "site", cwd=short_tmp)
    assert result.returncode == 0, result.stderr
    steps = result.stdout.split("Next steps:\n")[1]
    assert steps.startswith(
        '  1. Add "app_agent.contrib.django" to INSTALLED_APPS in djangoapp/settings.py: the\n'
    )
    assert steps.endswith("  5. bin/site rpc django.showmigrations\n")
    hook = (short_tmp / "rel/hooks/post_start/10-migrate.sh").read_text()
    assert hook.endswith('"$RPCCTL" rpc --lock-wait 300 django.migrate\n')

    # As scaffolded, with only where gunicorn listens given (never a fixed port in tests).
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "_RPCCTL"))}
    env = {**clean, "GUNICORN_CMD_ARGS": f"--bind unix:{short_tmp}/http.sock --no-control-socket"}
    runner = subprocess.Popen(
        ["bin/site", "start"], cwd=short_tmp, env=env, stderr=subprocess.PIPE, text=True
    )
    try:

        def migrated() -> bool:
            """The hook migrated the site (or the runner ended: the assert below says why)."""
            shown = subprocess.run(
                ["bin/site", "rpc", "--json", "django.showmigrations"],
                cwd=short_tmp,
                env=clean,
                capture_output=True,
                text=True,
                check=False,
            )
            if shown.returncode != 0:
                return runner.poll() is not None
            result = json.loads(shown.stdout.splitlines()[-1])["result"]
            return bool(result["polls"]["applied"]) and result["polls"]["pending"] == []

        wait_until(migrated, what="the post_start hook's django.migrate")
        assert runner.poll() is None, runner.communicate()[1]
        runner.send_signal(signal.SIGTERM)
        _out, err = runner.communicate(timeout=DEADLINE * 2)
        assert runner.returncode == 0, err
        assert '"hooks": "post_start"' in err
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()


# -- 3. a Django site never reports Django's version as its own --------------------------------


def serve_django_site(tmp: Path, **env: str) -> AppProcess:
    """The example Django site under gunicorn (preloaded: the agent in the arbiter)."""
    from conftest import ROOT

    site = ROOT / "examples" / "djangoapp"
    http = f"unix:{tmp}/http.sock"
    gunicorn = ["-m", "gunicorn", "--preload", "--no-control-socket", "-w", "1", "--bind", http]
    app = AppProcess(
        [sys.executable, *gunicorn, "djangoapp.wsgi"],
        node=f"unix:{tmp}/run/agent.sock",
        env={
            "PYTHONPATH": os.pathsep.join([str(tmp / "site-packages"), str(site)]),
            "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3",
            **env,
        },
        cwd=site,
        ready_line=None,
    )
    waited = run_rpcctl("-n", app.node, "ping", "--wait", str(DEADLINE))
    assert waited.returncode == 0, waited.stderr + app.stderr()
    return app


def site_version(app: AppProcess) -> object:
    info = app.rpcctl("info", "--json")
    assert info.returncode == 0, info.stderr
    return json.loads(info.stdout)["result"]["version"]


@pytest.mark.parametrize(
    ("env", "installed", "reported"),
    [
        ({}, False, None),  # not Django's version: nothing
        ({}, True, "2.5.0"),  # the distribution that provides the settings' package
        ({"RPCCTL_APP_VERSION": "1.2.3"}, True, "1.2.3"),  # said outright: that
    ],
)
def test_a_django_site_reports_its_own_version_or_none(
    short_tmp: Path, env: dict[str, str], installed: bool, reported: str | None
) -> None:
    if installed:  # a distribution "polling-site" that installs the package djangoapp
        dist = short_tmp / "site-packages" / "polling_site-2.5.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: polling-site\nVersion: 2.5.0\n"
        )
        (dist / "top_level.txt").write_text("djangoapp\n")
    app = serve_django_site(short_tmp, **env)
    try:
        assert site_version(app) == reported
        handshake = app.rpcctl("ping", "--json")
        assert handshake.returncode == 0
    finally:
        app.close()


def test_the_agents_own_tasks_never_name_the_apps_version() -> None:
    from app_agent.config import task_module

    def django_named() -> None: ...

    django_named.__module__ = "django"  # as app_agent.contrib.django names its tasks
    assert task_module(django_named) == "django"  # defined here, in the tests: as named
    from app_agent.contrib.django import tasks

    assert tasks.migrate.__module__ == "app_agent.contrib.django.tasks"
    registered = tasks._as_task(tasks.migrate, "migrate")
    assert registered.__module__ == "django"
    assert task_module(registered) == "app_agent.contrib.django.tasks"


# -- 1. an app that dies on SIGTERM leaves no stale socket behind ------------------------------

NO_HANDLER_APP = """
import sys, threading
import app_agent

app_agent.start(**({"node": sys.argv[1]} if len(sys.argv) > 1 else {}))
print("READY", flush=True)
threading.Event().wait()  # no SIGTERM handler: SIGTERM ends the process at once
"""


class Release:
    """A release whose app is a one-line program, run by the real `rpcctl start`."""

    def __init__(self, root: Path, *argv: str, toml: str = "") -> None:
        self.config = root / "rpcctl.toml"
        command = json.dumps([sys.executable, "-c", *argv])
        self.config.write_text(
            f'[app]\nname = "app"\ncommand = {command}\nnode = "unix:run/app.sock"\n'
            f"stop_timeout = 10\n{toml}"
        )
        self.socket = root / "run" / "app.sock"
        self.node = f"unix:{self.socket}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "_RPCCTL"))}
        # A file, not a pipe: the app inherits it, and an app that outlived a killed runner
        # would hold a pipe open for ever.
        self.log = root / "runner.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [rpcctl_executable(), "--config", str(self.config), "start"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=clean,
            )

    def rpcctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_rpcctl("--config", str(self.config), *args)

    def wait_ready(self) -> int:
        """The app's pid, once its agent answers."""
        waited = self.rpcctl("ping", "--wait", str(DEADLINE))
        assert waited.returncode == 0, waited.stderr + self.finish()[2]
        return int(self.rpcctl("pid").stdout)

    def finish(self) -> tuple[int, list[dict[str, object]], str]:
        """The runner's status, its log events and its whole stderr, once it has exited."""
        status = self.proc.wait(timeout=DEADLINE * 2)
        err = self.log.read_text()
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        return status, events, err

    def close(self) -> None:
        """The runner and everything it started, gone (a test that failed half-way)."""
        import signal

        from rpcctl.release.listening import process_tree

        if self.proc.poll() is None:
            for pid in process_tree(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def releases() -> Iterator[list[Release]]:
    made: list[Release] = []
    yield made
    for release in made:
        release.close()


def test_stop_leaves_no_socket_when_the_app_dies_on_sigterm(
    short_tmp: Path, releases: list[Release]
) -> None:
    release = Release(short_tmp, NO_HANDLER_APP)
    releases.append(release)
    pid = release.wait_ready()
    assert Path(f"{release.socket}.pid").read_text() == f"{pid}\n"
    stopped = release.rpcctl("stop")
    assert (stopped.returncode, stopped.stdout) == (0, f"stopped {release.node} (pid {pid})\n")
    # At once, not eventually: whatever comes next says plainly that nothing runs.
    assert not release.socket.exists()
    assert not Path(f"{release.socket}.pid").exists()
    pinged = release.rpcctl("ping")
    assert pinged.returncode == 3
    assert pinged.stderr.startswith(
        f"rpcctl: error: {release.node}: no agent is running (the socket does not exist); "
    )
    again = release.rpcctl("stop")
    assert again.returncode == 3
    assert "(the socket does not exist)" in again.stderr
    status, events, _err = release.finish()
    assert status == 0
    assert [e["status"] for e in events if e["event"] == "runner.app_stopped"] == [143]


@pytest.mark.parametrize("how", ["runner_sigterm", "app_crash"])
def test_the_runner_removes_the_socket_its_app_left_behind(
    short_tmp: Path, releases: list[Release], how: str
) -> None:
    import signal

    release = Release(short_tmp, NO_HANDLER_APP)
    releases.append(release)
    pid = release.wait_ready()
    if how == "runner_sigterm":  # systemd stopping the unit: the runner SIGTERMs the app
        release.proc.send_signal(signal.SIGTERM)
        expected = 0
    else:
        os.kill(pid, signal.SIGKILL)
        expected = 128 + signal.SIGKILL
    status, events, err = release.finish()
    assert status == expected, err
    removed = [e for e in events if e["event"] == "runner.socket_removed"]
    assert [(e["path"], e["reason"]) for e in removed] == [
        (str(release.socket), f"the app (pid {pid}) exited without stopping its agent")
    ]
    assert not release.socket.exists()
    assert "(the socket does not exist)" in release.rpcctl("ping").stderr


def test_a_socket_left_by_a_crash_names_the_pid_that_is_gone(short_tmp: Path) -> None:
    import signal

    node = f"unix:{short_tmp}/run/app.sock"
    app = AppProcess([sys.executable, "-c", NO_HANDLER_APP], node=node)
    app.proc.send_signal(signal.SIGKILL)
    app.proc.wait(timeout=DEADLINE)
    try:
        for command in (["ping"], ["rpc", "x.y"], ["tasks"]):
            result = run_rpcctl("-n", node, *command)
            assert (result.returncode, result.stderr) == (
                3,
                f"rpcctl: error: {node}: no agent is running: the app exited without stopping "
                f"its agent (pid {app.proc.pid} is gone)\n",
            )
        # The next agent on the node takes the socket over, and records its own pid.
        again = AppProcess([sys.executable, "-c", NO_HANDLER_APP], node=node)
        try:
            assert again.rpcctl("ping").stdout == "pong\n"
            assert (short_tmp / "run/app.sock.pid").read_text() == f"{again.proc.pid}\n"
        finally:
            again.close()
    finally:
        app.close()


def test_only_a_stale_socket_is_removed(short_tmp: Path, agent_in_process: object) -> None:
    import socket

    from app_agent.wire import processes

    live = agent_in_process.address.path  # type: ignore[attr-defined]
    assert processes.recorded_agent_pid(live) == os.getpid()
    assert not processes.remove_stale_socket(live)  # something answers there
    assert os.path.exists(live)
    plain = short_tmp / "plain.sock"
    plain.write_text("not a socket")
    assert not processes.remove_stale_socket(str(plain))
    assert plain.exists()
    assert not processes.remove_stale_socket(str(short_tmp / "missing.sock"))
    stale = str(short_tmp / "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # bound, never listening, then closed: what a dead agent leaves
    Path(f"{stale}.pid").write_text("999999999\n")  # beyond any pid: gone
    assert processes.gone_agent_pid(stale) == 999999999
    assert processes.remove_stale_socket(stale)
    assert not os.path.exists(stale)
    assert not os.path.exists(f"{stale}.pid")


@pytest.mark.parametrize("recorded", ["garbage\n", "", "1" * 100, "{mine}\n"])
def test_a_stale_socket_without_a_gone_pid_says_stale(short_tmp: Path, recorded: str) -> None:
    import socket

    stale = short_tmp / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    Path(f"{stale}.pid").write_text(recorded.format(mine=os.getpid()))  # ours runs: not gone
    result = run_rpcctl("-n", f"unix:{stale}", "ping")
    assert (result.returncode, result.stderr) == (
        3,
        f"rpcctl: error: unix:{stale}: no agent is running (the socket is stale)\n",
    )


def test_the_agent_records_its_pid_and_takes_it_away(short_tmp: Path) -> None:
    import app_agent

    path = short_tmp / "run" / "a.sock"
    pid_file = Path(f"{path}.pid")
    with app_agent.start(node=f"unix:{path}"):
        assert pid_file.read_text() == f"{os.getpid()}\n"
        assert oct(pid_file.stat().st_mode & 0o777) == oct(0o644)
        pid_file.write_text("12345\n")  # a newer agent's, say: not ours to remove
    assert pid_file.read_text() == "12345\n"
    with app_agent.start(node=f"unix:{path}"):
        pass
    assert not pid_file.exists()
    assert not path.exists()


# -- 2. a node given twice: warned, and the runner says where the agent went ------------------


def test_a_node_other_than_rpcctl_node_is_a_warning(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app_agent import config, wire

    monkeypatch.chdir(short_tmp)
    monkeypatch.setenv("RPCCTL_NODE", "unix:run/app.sock")
    other = config.load("unix:/elsewhere/agent.sock")
    assert other.environment_node == wire.parse_node(f"unix:{short_tmp}/run/app.sock")
    assert config.load(f"unix:{short_tmp}/run/app.sock").environment_node is None  # the same
    assert config.load().environment_node is None  # none given: RPCCTL_NODE itself
    monkeypatch.setenv("RPCCTL_NODE", "not-a-node")
    assert config.load("unix:/x.sock").environment_node is None  # not this agent's to judge
    monkeypatch.delenv("RPCCTL_NODE")
    assert config.load("unix:/x.sock").environment_node is None


def test_the_runner_says_where_a_hard_coded_node_listens(
    short_tmp: Path, releases: list[Release]
) -> None:
    elsewhere = f"unix:{short_tmp}/other/agent.sock"
    # Long enough for the app to start its agent on a loaded machine; the verdict waits it.
    release = Release(short_tmp, NO_HANDLER_APP, elsewhere, toml="ready_timeout = 5\n")
    releases.append(release)
    status, events, err = release.finish()
    assert status == 3, err
    warned = [e for e in events if e["event"] == "agent.node_differs"]
    assert [(e["node"], e["environment_node"]) for e in warned] == [(elsewhere, release.node)]
    stopped = events[-1]
    assert stopped["event"] == "runner.stopped"
    assert stopped["reason"] == (
        f"the app's agent did not answer ping at {release.node} within 5s: it listens at "
        f"{elsewhere} instead (a node given to app_agent.start() overrides "
        f"RPCCTL_NODE={release.node}; under `rpcctl start`, call start() without node=); "
        "the app was stopped"
    )


# An "agent" that listens at the node, its pid beside it, and never answers.
SILENT_AGENT = """
import os, socket, threading
path = os.environ["RPCCTL_NODE"][len("unix:"):]
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen()
with open(path + ".pid", "w") as f:
    f.write(f"{os.getpid()}\\n")
threading.Event().wait()
"""


@pytest.mark.parametrize(
    ("program", "verdict"),
    [
        (
            "import threading; threading.Event().wait()",
            " (does the app call app_agent.start()? Under `rpcctl start` it needs no node: "
            "the runner sets RPCCTL_NODE={node})",
        ),
        (SILENT_AGENT, ": its agent listens there but did not answer in time"),
    ],
)
def test_the_never_ready_verdict_when_the_agent_is_not_elsewhere(
    short_tmp: Path, releases: list[Release], program: str, verdict: str
) -> None:
    release = Release(short_tmp, program, toml="ready_timeout = 1\n")
    releases.append(release)
    status, events, err = release.finish()
    assert status == 3, err
    assert events[-1]["reason"] == (
        f"the app's agent did not answer ping at {release.node} within 1s"
        f"{verdict.format(node=release.node)}; the app was stopped"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_another_user_cannot_remove_a_stale_socket(short_tmp: Path) -> None:
    import socket

    from app_agent.wire import processes

    short_tmp.chmod(0o755)  # others may look and connect, not write
    stale = str(short_tmp / "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)
    os.chmod(stale, 0o666)  # noqa: S103  (anyone may connect: only the directory protects it)
    Path(f"{stale}.pid").write_text("999999999\n")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, as nobody
        removed = True
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            removed = processes.remove_stale_socket(stale)
        finally:
            os._exit(1 if removed else 0)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # refused, nothing raised
    assert os.path.exists(stale)
    assert processes.remove_stale_socket(stale)  # its owner can
