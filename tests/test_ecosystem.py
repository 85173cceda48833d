"""The ecosystem: asyncio apps under uvicorn, pre-fork gunicorn, fork safety, readiness,
and the deployment recipes (systemd, Kubernetes, Docker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DEADLINE, EXAMPLE, ROOT, AppProcess, run_rpcctl, wait_until

EXAMPLES = ROOT / "examples"


def http_get_unix(path: str, url: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(path)
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    result: dict[str, object] = json.loads(body)
    return result


def test_fastapi_under_uvicorn_runs_async_tasks_on_the_app_loop(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    http = str(short_tmp / "http.sock")
    app = AppProcess(
        [sys.executable, "-m", "uvicorn", "--uds", http, "asyncapp.main:app"],
        node=node,
        env={"PYTHONPATH": str(EXAMPLES / "asyncapp")},
        ready_line=None,
    )
    try:
        waited = run_rpcctl("-n", node, "ping", "--ready", "--wait", str(DEADLINE))
        assert waited.returncode == 0, waited.stderr + app.stderr()
        for expected in (1, 2, 3):
            assert http_get_unix(http, "/visit") == {"visits": expected}
        result = run_rpcctl("-n", node, "rpc", "asyncapp.tasks.visits")
        assert json.loads(result.stdout) == {"visits": 3, "on_app_loop": True}, result.stderr
        assert run_rpcctl("-n", node, "rpc", "asyncapp.tasks.reset_visits").stdout == "3\n"
        assert http_get_unix(http, "/visit") == {"visits": 1}
        thread = run_rpcctl("-n", node, "rpc", "asyncapp.tasks.thread_name").stdout
        assert thread.strip() not in ("", "MainThread")
        info = json.loads(run_rpcctl("-n", node, "info", "--json").stdout)["result"]
        assert info["event_loop"] is True
        app.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert app.proc.wait(timeout=DEADLINE) in (0, -signal.SIGTERM)
        assert not Path(node.removeprefix("unix:")).exists()  # the lifespan stopped it
    finally:
        app.close()


def test_gunicorn_prefork_with_the_agent_in_the_arbiter(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    http = str(short_tmp / "http.sock")
    cwd = EXAMPLES / "preforkapp"
    app = AppProcess(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "preforkapp.wsgi:app"],
        node=node,
        env={
            "PYTHONPATH": str(cwd),
            "PREFORKAPP_BIND": f"unix:{http}",
            "PREFORKAPP_WORKERS": "3",
        },
        cwd=cwd,
        ready_line=None,
    )
    try:
        assert run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE)).returncode == 0

        def arbiter() -> dict[str, object]:
            answer: dict[str, object] = json.loads(
                run_rpcctl("-n", node, "rpc", "preforkapp.tasks.arbiter").stdout
            )
            return answer

        wait_until(lambda: len(arbiter()["workers"]) == 3, what="three workers")  # type: ignore[arg-type]
        first = arbiter()
        assert first["pid"] == app.proc.pid  # the agent lives in the arbiter
        served = http_get_unix(http, "/")
        assert served["worker"] in first["workers"]  # type: ignore[operator]
        assert served["arbiter"] == app.proc.pid
        # Reload the workers through the agent: new workers, the same agent still answering.
        assert run_rpcctl("-n", node, "rpc", "preforkapp.tasks.reload_workers").returncode == 0
        old = set(first["workers"])  # type: ignore[call-overload]
        wait_until(
            lambda: len(arbiter()["workers"]) == 3 and not old & set(arbiter()["workers"]),  # type: ignore[arg-type,call-overload]
            what="the workers to be replaced",
        )
        assert http_get_unix(http, "/")["arbiter"] == app.proc.pid
        assert run_rpcctl("-n", node, "ping").returncode == 0
        app.proc.send_signal(signal.SIGTERM)
        app.proc.wait(timeout=DEADLINE)
        assert not Path(node.removeprefix("unix:")).exists()
    finally:
        app.close()


FORK_SCRIPT = """
import os, sys, time
import app_agent, rpcctl
parent_node, child_node = sys.argv[1], sys.argv[2]
agent = app_agent.start(node=parent_node)
pid = os.fork()
if pid == 0:
    # The child: no inherited agent, its own can start, and exiting must not remove the
    # parent's socket.
    assert app_agent.current() is None
    with app_agent.start(node=child_node):
        rpcctl.ping(child_node)
    rpcctl.ping(parent_node)  # the parent still serves on its socket
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert os.path.exists(parent_node[5:])
rpcctl.ping(parent_node)
agent.stop()
print("ok")
"""


def test_a_forked_child_does_not_inherit_a_half_alive_agent(short_tmp: Path) -> None:
    script = short_tmp / "fork.py"
    script.write_text(FORK_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), f"unix:{short_tmp}/p.sock", f"unix:{short_tmp}/c.sock"],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_readiness(sample_app: AppProcess) -> None:
    assert sample_app.rpcctl("ping", "--ready").stdout == "pong\n"
    assert sample_app.rpcctl("rpc", "sampleapp.ready(False)").returncode == 0
    not_ready = sample_app.rpcctl("ping", "--ready")
    assert not_ready.returncode == 3
    assert "the agent answers, but the app is not ready" in not_ready.stderr
    assert sample_app.rpcctl("ping").returncode == 0  # alive all the same
    waiter = subprocess.Popen(
        [*run_argv(sample_app.node), "ping", "--ready", "--wait", str(DEADLINE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiter.poll() is None
    assert sample_app.rpcctl("rpc", "sampleapp.ready(True)").returncode == 0
    out, err = waiter.communicate(timeout=DEADLINE * 2)
    assert (waiter.returncode, out) == (0, "pong\n"), err


def run_argv(node: str) -> list[str]:
    from conftest import rpcctl_executable

    return [rpcctl_executable(), "-n", node]


# -- recipes ---------------------------------------------------------------------------------

DEPLOY = EXAMPLES / "deploy"


def test_systemd_unit(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "myapp.service").read_text()
    lines = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert lines["ExecStart"] == "/srv/myapp/bin/myapp start"
    assert lines["ExecStop"].startswith("/srv/myapp/bin/myapp stop")
    assert int(lines["TimeoutStopSec"]) > 30
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit was only parsed")
    # Verify the unit with its paths pointing at this checkout's example release.
    local = (
        unit.replace("/srv/myapp", str(EXAMPLE))
        .replace("User=myapp\n", "")
        .replace("Group=myapp\n", "")
    )
    path = tmp_path / "myapp.service"
    path.write_text(local)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if ("myapp.service" in line and "Unknown" in line) or "Failed to parse" in line
    ]
    assert problems == [], result.stderr


def kubernetes_documents() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "myapp.yaml").read_text())
    return {d["kind"]: d for d in documents}


def test_kubernetes_manifests() -> None:
    by_kind = kubernetes_documents()
    service, deployment, job = by_kind["Service"], by_kind["Deployment"], by_kind["Job"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one record per pod
    port = service["spec"]["ports"][0]["port"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RPCCTL_NODE"] == f"tcp://0.0.0.0:{port}"
    assert env["RPCCTL_ACCESS"] == "/etc/rpcctl/access.toml"  # identities: TCP's secrets
    version = container["image"].rpartition(":")[2]
    assert env["RPCCTL_APP_VERSION"] == version  # what the Job's --where matches
    # The app itself: the runner would replace RPCCTL_NODE with its rpcctl.toml's node.
    assert container["command"] == ["python", "-m", "myapp"]
    assert container["workingDir"] == "/srv/myapp"
    for probe, extra in (("livenessProbe", []), ("readinessProbe", ["--ready"])):
        spec = container[probe]
        assert spec["timeoutSeconds"] == 1
        command = spec["exec"]["command"]
        assert command[0].endswith("bin/myapp")
        assert "ping" in command
        assert command[command.index("--identity") + 1] == "probe"
        assert all(flag in command for flag in extra)
        assert float(command[command.index("--timeout") + 1]) < spec["timeoutSeconds"]
    job_spec = job["spec"]["template"]["spec"]
    job_command = job_spec["containers"][0]["command"]
    assert job_spec["containers"][0]["image"] == container["image"]
    assert "--one" in job_command
    assert job_command[job_command.index("--where") + 1] == f"version={version}"
    assert job_command[job_command.index("--identity") + 1] == "deploy"
    assert f"dns:myapp-agents.default.svc.cluster.local:{port}" in job_command
    assert job_command[-1] == "myapp.tasks.migrate"
    # Files mounted one by one (a volume's own files are symlinks rpcctl does not follow),
    # owner-only, and the Job gets its own cookie only.
    for volume in pod["volumes"] + job_spec["volumes"]:
        source = volume.get("secret") or volume.get("configMap")
        assert source["defaultMode"] & 0o077 == 0  # owner-only, as rpcctl requires
    for mount in container["volumeMounts"] + job_spec["containers"][0]["volumeMounts"]:
        assert mount["mountPath"].endswith("/" + mount["subPath"])
    assert job_spec["volumes"][0]["secret"]["items"] == [
        {"key": "deploy.cookie", "path": "deploy.cookie"}
    ]


def test_kubernetes_recipe_works_against_a_live_app(short_tmp: Path) -> None:
    """The recipe's access file, environment, probes and migration Job (their own argv,
    with this checkout's paths) against a real TCP agent of the example app."""
    from conftest import start_myapp

    by_kind = kubernetes_documents()
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    etc = short_tmp / "etc-rpcctl"
    etc.mkdir()
    files = {"access.toml": by_kind["ConfigMap"]["data"]["access.toml"]}
    files |= {
        name: f"{name} 0123456789abcdef\n"
        for name in ("deploy.cookie", "probe.cookie", "lifecycle.cookie")
    }
    for name, text in files.items():
        (etc / name).write_text(text)
        (etc / name).chmod(0o400)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    def local(text: str) -> str:
        return text.replace("/etc/rpcctl", str(etc)).replace("4370", str(port))

    env = {e["name"]: local(e["value"]) for e in container["env"] if "value" in e}
    agent_env = {k: v for k, v in env.items() if k.startswith("RPCCTL_") and k != "RPCCTL_NODE"}
    # The test's own wait for the agent names an identity, as the probes do.
    waiter = {"RPCCTL_IDENTITY": "probe", "RPCCTL_COOKIE_FILE": str(etc / "probe.cookie")}
    app = start_myapp(short_tmp, node=f"tcp://127.0.0.1:{port}", extra_env=agent_env | waiter)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    try:
        for name in ("livenessProbe", "readinessProbe"):
            argv = [
                str(EXAMPLE / "bin" / "myapp") if a.endswith("bin/myapp") else local(a)
                for a in container[name]["exec"]["command"]
            ]
            probe_env = {
                **clean,
                **agent_env,
                "RPCCTL_BIN": str(Path(sys.executable).parent / "rpcctl"),
            }
            result = subprocess.run(
                argv, capture_output=True, text=True, env=probe_env, check=False
            )
            assert (result.returncode, result.stdout) == (0, "pong\n"), result.stderr
        job = by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
        argv = [local(a) for a in job]
        argv[0] = str(Path(sys.executable).parent / "rpcctl")
        argv = [f"dns:127.0.0.1:{port}" if a.startswith("dns:") else a for a in argv]
        result = subprocess.run(argv, capture_output=True, text=True, env=clean, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stderr.startswith(f"running on tcp://127.0.0.1:{port}\n")
        # The probe identity may ping, and nothing more.
        refused = run_rpcctl(
            "-n", f"tcp://127.0.0.1:{port}", "--identity", "probe",
            "--cookie-file", str(etc / "probe.cookie"), "rpc", "myapp.tasks.migrate",
        )  # fmt: skip
        assert refused.returncode == 5
        assert "probe may not run myapp.tasks.migrate" in refused.stderr
        # preStop drains (its own identity, drain only); the readiness probe then fails.
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        argv = [
            str(EXAMPLE / "bin" / "myapp") if a.endswith("bin/myapp") else local(a)
            for a in pre_stop
        ]
        result = subprocess.run(argv, capture_output=True, text=True, env=probe_env, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith("drained: not ready (0 on_drain hooks ran)\n")
        ready = [local(a) for a in container["readinessProbe"]["exec"]["command"]]
        ready[0] = str(EXAMPLE / "bin" / "myapp")
        probed = subprocess.run(ready, capture_output=True, text=True, env=probe_env, check=False)
        assert probed.returncode == 3, probed.stderr
    finally:
        app.close()


def test_dockerfile_healthcheck_uses_rpcctl_ping() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    instructions = " ".join(text.replace("\\\n", " ").split("\n"))
    assert 'CMD ["/srv/myapp/bin/myapp", "ping", "--ready"' in instructions
    assert "HEALTHCHECK" in instructions
    assert 'CMD ["/srv/myapp/bin/myapp", "start"]' in text


# -- CLI conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts(shell: str) -> None:
    result = run_rpcctl(env={"_RPCCTL_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0
    assert "_RPCCTL_COMPLETE" in result.stdout


def test_completion_of_commands() -> None:
    result = run_rpcctl(
        env={"_RPCCTL_COMPLETE": "bash_complete", "COMP_WORDS": "rpcctl pi", "COMP_CWORD": "1"}
    )
    assert "ping" in result.stdout
    assert "pid" in result.stdout


def test_no_color_and_no_tty_mean_no_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    from app_agent import logs

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert logs._colour_allowed(Tty()) is True  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert logs._colour_allowed(Tty()) is False  # type: ignore[arg-type]
    assert logs._colour_allowed(sys.stderr) is False  # pytest's stderr is not a TTY


def test_every_command_has_json() -> None:
    from rpcctl.cli import cli

    lacking = []
    for name, command in cli.commands.items():
        subcommands = getattr(command, "commands", None)
        for cmd_name, cmd in (subcommands or {name: command}).items():
            if cmd_name == "start":
                continue  # a foreground supervisor: its output is its structlog JSON log
            if "as_json" not in {p.name for p in cmd.params}:
                lacking.append(cmd_name)
    assert lacking == []


def test_release_init_json(short_tmp: Path) -> None:
    result = run_rpcctl("release", "init", "jsonapp", "--json", cwd=short_tmp)
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert str(short_tmp / "bin" / "jsonapp") in document["result"]["files"]
