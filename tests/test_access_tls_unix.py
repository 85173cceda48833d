"""Identities proven by a verified TLS client certificate or by the peer's UNIX uid."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import trustme
from access_support import ACCESS, access_files, agent_log, start_app

import app_agent
import rpcctl
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from conftest import NOBODY, needs_root, run_rpcctl

# -- TLS identities: the verified client certificate ------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    files = {"ca": directory / "ca.pem", "server": directory / "server.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    for name in ("ci", "stranger"):
        files[name] = directory / f"{name}.pem"
        leaf = ca.issue_cert(f"{name}@example", common_name=name)
        leaf.private_key_and_cert_chain_pem.write_to_path(str(files[name]))
    return {k: str(v) for k, v in files.items()}


def test_tls_identities_come_from_the_client_certificate(
    short_tmp: Path, certificates: dict[str, str]
) -> None:
    access = ACCESS + '[identity.ci]\ntls_subject = "CN=ci"\nallow = ["read", "sampleapp.add"]\n'
    env = {
        "RPCCTL_ACCESS": str(access_files(short_tmp, access)),
        "RPCCTL_TLS_CERT": certificates["server"],
        "RPCCTL_TLS_CLIENT_CA": certificates["ca"],
    }
    app = start_app("tls://127.0.0.1:0", env)
    try:

        def with_cert(cert: str, *args: str) -> subprocess.CompletedProcess[str]:
            tls = ["--tls-ca", certificates["ca"], "--tls-cert", certificates[cert]]
            return run_rpcctl("-n", app.node, *tls, *args)

        assert with_cert("ci", "rpc", "sampleapp.add(40, 2)").stdout == "42\n"
        echo = with_cert("ci", "rpc", 'sampleapp.echo("x")')
        assert (echo.returncode, echo.stderr) == (
            5,
            "rpcctl: error: ci may not run sampleapp.echo\n",
        )
        assert with_cert("ci", "--identity", "ci", "ping").stdout == "pong\n"  # named, no cookie
        stranger = with_cert("stranger", "ping")  # trusted CA, but no identity of its own
        assert stranger.returncode == 5
        assert "this agent requires an identity" in stranger.stderr
        posing = with_cert("stranger", "--identity", "ci", "ping")
        assert posing.returncode == 5
        cookie = str(short_tmp / "deploy.cookie")
        deploy = with_cert(
            "stranger", "--identity", "deploy", "--cookie-file", cookie, "rpc", "sampleapp.echo(1)"
        )
        assert (deploy.returncode, deploy.stdout) == (0, "1\n")
    finally:
        log = agent_log(app)
        app.close()
    calls = [(e["identity"], e["task"], e["auth"]) for e in log if e["event"] == "call.finished"]
    assert calls == [
        ("ci", "sampleapp.add", "tls-client-cert"),
        ("deploy", "sampleapp.echo", "tls-client-cert+cookie"),
    ]
    refused = [e["reason"] for e in log if e["event"] == "connection.refused"]
    assert refused == [
        "no identity: the client names none, and neither its certificate nor its uid is one",
        "identity 'ci' is not this connection's certificate or uid",
    ]


# -- UNIX identities: the peer's uid ---------------------------------------------------------


def cli_as(uid: int, node: str, commands: list[list[str]]) -> list[tuple[int, str, str]]:
    """Run each rpcctl command line (through click's CliRunner: the interpreter lives in
    root's home, which another uid cannot exec) in a forked child that has become *uid*;
    (exit code, stdout, stderr) of each."""
    from click.testing import CliRunner

    from rpcctl.cli import cli

    # Commands load on first use; the child cannot read root's home (the stdlib) any more.
    for module in set(cli.lazy.values()):
        importlib.import_module(module)
    import rpyc  # noqa: F401  (what a connection loads, likewise)

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for key in [k for k in os.environ if k.startswith("RPCCTL_")]:
                del os.environ[key]
            results = []
            for args in commands:
                done = CliRunner().invoke(cli, ["-n", node, *args])
                results.append((done.exit_code, done.stdout, done.stderr))
            os.write(write_end, json.dumps(results).encode())
            status = 0
        except BaseException:  # noqa: BLE001  (shown on stderr: the parent only sees a status)
            import traceback

            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    assert status == 0
    return [tuple(r) for r in json.loads(data)]  # type: ignore[misc]


@needs_root
def test_a_unix_user_identity(short_tmp: Path) -> None:
    """A local user (here: nobody) gets its grants on the UNIX socket, checked by its uid."""
    short_tmp.chmod(0o755)  # nobody must reach the socket's directory below
    access = ACCESS + '[identity.ops]\nunix_user = "nobody"\nallow = ["read"]\n'
    app = start_app(
        f"unix:{short_tmp}/run/agent.sock", {"RPCCTL_ACCESS": str(access_files(short_tmp, access))}
    )
    try:
        run_dir = short_tmp / "run"
        modes = (run_dir.stat().st_mode, (run_dir / "agent.sock").stat().st_mode)
        assert (modes[0] & 0o777, modes[1] & 0o777) == (0o711, 0o666)
        ping, listed, refused, stack = cli_as(
            NOBODY,
            app.node,
            [["ping"], ["tasks", "--json"], ["rpc", "sampleapp.add(1, 2)"], ["stack", "--json"]],
        )
        assert ping == (0, "pong\n", "")
        assert listed[0] == 0
        assert json.loads(listed[1])["result"] == []  # read, but no task
        assert refused == (5, "", "rpcctl: error: ops may not run sampleapp.add\n"), refused
        assert stack[0] == 0
        # Root passes the peer check, but is no identity here without a cookie.
        root = run_rpcctl("-n", app.node, "ping")
        assert root.returncode == 5
        assert "this agent requires an identity" in root.stderr
    finally:
        log = agent_log(app)
        app.close()
    stacks = [e for e in log if e["event"] == "introspect.stack"]
    assert [(e["identity"], e["auth"]) for e in stacks] == [("ops", "peer-uid")]
    assert stacks[0]["caller"].startswith(f"uid={NOBODY} pid=")
    denied = [e for e in log if e["event"] == "access.denied"]
    assert [(e["identity"], e["task"]) for e in denied] == [("ops", "sampleapp.add")]


@needs_root
def test_other_uids_are_still_refused_before_anything(short_tmp: Path) -> None:
    """Widening the socket for a named user admits that user's uid only."""
    short_tmp.chmod(0o755)
    access = '[identity.root]\nunix_user = "root"\nallow = ["read"]\n'
    access += '[identity.ops]\nunix_user = "nobody"\nallow = ["read"]\n'
    path = access_files(short_tmp, access)
    with app_agent.start(node=f"unix:{short_tmp}/run/a.sock", access=str(path)) as agent:
        [(code, _out, err)] = cli_as(1, agent.node, [["ping"]])  # daemon: neither of them
        assert code == 5
        assert "peer uid 1 is not allowed" in err
        with rpcctl.connect(agent.node) as conn:
            assert conn.handshake["identity"] == "root"
