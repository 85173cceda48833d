"""Security: cookies, peer checks, TLS, the audit log, and hostile input at the socket."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app_agent
import rpcctl
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from app_agent import wire
from app_agent.exceptions import ConfigurationError
from app_agent.wire import cookies
from conftest import DEADLINE, SAMPLEAPP, AppProcess, run_rpcctl, wait_until
from rpcctl.client import Security

EXAMPLES = int(os.environ.get("RPCCTL_HOSTILE_EXAMPLES", "1000"))


def cookie_file(
    directory: Path, text: str = "the-shared-cookie-0123456789", mode: int = 0o600
) -> Path:
    path = directory / "cookie"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def guarded_app(short_tmp: Path) -> Iterator[AppProcess]:
    """sampleapp with a cookie, on a UNIX socket."""
    cookie = cookie_file(short_tmp)
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"RPCCTL_COOKIE_FILE": str(cookie)},
    )
    app.cookie = cookie  # type: ignore[attr-defined]
    try:
        yield app
    finally:
        app.close()


def agent_log(app: AppProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]


# -- cookies through the real executable ---------------------------------------------------


def test_cookie_is_required_checked_and_logged(guarded_app: AppProcess, short_tmp: Path) -> None:
    node = guarded_app.node
    secret = guarded_app.cookie.read_text().strip()  # type: ignore[attr-defined]

    missing = run_rpcctl("-n", node, "ping")
    assert missing.returncode == 5
    assert "the agent requires a cookie: set RPCCTL_COOKIE" in missing.stderr

    wrong = run_rpcctl("-n", node, "ping", env={"RPCCTL_COOKIE": "not-the-cookie"})
    assert wrong.returncode == 5
    assert "wrong cookie: the agent refused our proof" in wrong.stderr

    other = short_tmp / "other"
    other.mkdir()
    wrong_file = run_rpcctl(
        "-n", node, "--cookie-file", str(cookie_file(other, "x" * 40)), "rpc", "add(1)"
    )
    assert wrong_file.returncode == 5

    ok_env = run_rpcctl("-n", node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": secret})
    ok_file = run_rpcctl("-n", node, "--cookie-file", str(guarded_app.cookie), "rpc", "add(2, 2)")  # type: ignore[attr-defined]
    ok_file_env = run_rpcctl(
        "-n",
        node,
        "ping",
        env={"RPCCTL_COOKIE_FILE": str(guarded_app.cookie)},  # type: ignore[attr-defined]
    )
    assert (ok_env.stdout, ok_file.stdout, ok_file_env.stdout) == ("3\n", "4\n", "pong\n")

    log = agent_log(guarded_app)
    reasons = [e["reason"] for e in log if e["event"] == "connection.refused"]
    assert reasons.count("no cookie: the client did not send a proof") == 1
    assert reasons.count("wrong cookie: the client's proof does not match") == 2
    # Accepted connections log at debug (a probe would flood the log); each call names how
    # its caller authenticated.
    calls = [e for e in log if e["event"] == "call.finished"]
    assert {e["auth"] for e in calls} == {"peer-uid+cookie"}
    # The cookie never appears in the agent's log, nor in what the client printed.
    everything = json.dumps(log) + missing.stderr + wrong.stderr + ok_env.stderr
    assert secret not in everything


def test_a_replayed_handshake_is_refused(guarded_app: AppProcess) -> None:
    secret = guarded_app.cookie.read_text().strip().encode()  # type: ignore[attr-defined]
    path = wire.parse_node(guarded_app.node).path
    nonce = cookies.new_nonce()
    hello = wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "op": "ping", "nonce": nonce})

    def handshake(proof_for: str | None) -> tuple[dict[str, Any], bytes]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            sock.sendall(hello)
            challenge = wire.decode_line(sock.recv(4096))["challenge"]
            proof = cookies.proof(secret, "client", nonce, proof_for or challenge, "ping")
            line = wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "proof": proof})
            sock.sendall(line)
            return wire.decode_line(sock.recv(4096)), line

    recorded_answer, recorded_line = handshake(None)
    assert recorded_answer["ok"] is True
    # Replay the recorded client lines on a new connection: the agent's challenge is new.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(hello)
        wire.decode_line(sock.recv(4096))
        sock.sendall(recorded_line)
        answer = wire.decode_line(sock.recv(4096))
    assert answer == {
        "rpcctl": wire.PROTOCOL_VERSION,
        "ok": False,
        "kind": "auth",
        "reason": "wrong_cookie",
        "message": "wrong cookie",
    }
    assert wire.ErrorKind(answer["kind"]).exit_code == 5
    assert guarded_app.rpcctl("ping").returncode == 5  # still refusing strangers
    result = run_rpcctl("-n", guarded_app.node, "ping", env={"RPCCTL_COOKIE": secret.decode()})
    assert result.stdout == "pong\n"  # and still serving
    refused = [e for e in agent_log(guarded_app) if e["event"] == "connection.refused"]
    assert refused[0]["reason"] == "wrong cookie: the client's proof does not match"


def test_the_client_verifies_the_agent(short_tmp: Path) -> None:
    """An impostor that accepts any proof cannot prove the cookie back: exit 5."""
    path = str(short_tmp / "impostor.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def impostor() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(
                wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "challenge": "ab" * 16})
            )
            conn.recv(4096)
            conn.sendall(
                wire.encode_line(
                    {"rpcctl": wire.PROTOCOL_VERSION, "ok": True, "pong": True, "proof": "00"}
                )
            )

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    result = run_rpcctl("-n", f"unix:{path}", "ping", env={"RPCCTL_COOKIE": "c" * 32})
    thread.join(DEADLINE)
    listener.close()
    assert result.returncode == 5
    assert "the agent's proof does not match our cookie" in result.stderr


def test_an_agent_without_a_cookie_cannot_prove_itself(sample_app: AppProcess) -> None:
    result = run_rpcctl("-n", sample_app.node, "ping", env={"RPCCTL_COOKIE": "c" * 32})
    assert result.returncode == 5
    assert "the agent has no cookie, so it cannot prove it is ours" in result.stderr


def test_cookie_files_others_can_read_are_refused_on_both_sides(short_tmp: Path) -> None:
    loose = cookie_file(short_tmp, mode=0o644)
    result = run_rpcctl("-n", f"unix:{short_tmp}/x.sock", "--cookie-file", str(loose), "ping")
    assert result.returncode == 2
    assert f"cookie file {loose} is accessible by group or others (mode 0644)" in result.stderr
    assert f"chmod 600 {loose}" in result.stderr
    with pytest.raises(ConfigurationError, match=f"chmod 600 {loose}"):
        app_agent.start(node=f"unix:{short_tmp}/x.sock", cookie_file=loose)
    assert app_agent.current() is None


def test_no_option_takes_the_cookie_itself() -> None:
    result = run_rpcctl("--cookie", "s3cret", "ping")
    assert result.returncode == 2
    assert "No such option '--cookie'" in result.stderr


def test_cookie_generate(short_tmp: Path) -> None:
    path = short_tmp / "cookie"
    result = run_rpcctl("cookie", "generate", str(path))
    assert result.returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert len(secret) >= 43
    assert secret not in result.stdout + result.stderr
    again = run_rpcctl("cookie", "generate", str(path))
    assert again.returncode == 2
    assert "already exists (use --force" in again.stderr
    assert path.read_text().strip() == secret
    assert run_rpcctl("cookie", "generate", "--force", str(path)).returncode == 0
    assert path.read_text().strip() != secret


def test_runner_hands_the_cookie_file_to_app_and_hooks(short_tmp: Path) -> None:
    from runner_support import Release

    cookie = cookie_file(short_tmp)
    r = Release(
        short_tmp,
        {"post_start/10.sh": '"$RPCCTL" rpc \'add(20, 22)\' > "$RPCCTL_ROOT/answer"\n'},
        toml="",
    )
    r.config.write_text(
        r.config.read_text().replace("[app]\n", f'[app]\ncookie_file = "{cookie.name}"\n')
    )
    r.start()
    try:
        wait_until(lambda: (short_tmp / "answer").exists() and (short_tmp / "answer").read_text())
        assert (short_tmp / "answer").read_text() == "42\n"
        assert r.rpcctl("ping").returncode == 0  # the config's cookie_file, for us too
        assert run_rpcctl("-n", r.node, "ping").returncode == 5  # strangers are refused
        r.signal(15)
        assert r.wait()[0] == 0
    finally:
        r.close()


def test_audit_log_records_calls_with_argument_sizes_not_values(sample_app: AppProcess) -> None:
    private_value = "hunter2-do-not-log"
    assert sample_app.rpcctl("rpc", f'sampleapp.echo("{private_value}")').returncode == 0
    assert sample_app.rpcctl("rpc", 'sampleapp.greet("ops")').returncode == 0
    assert sample_app.rpcctl("rpc", "sampleapp.boom").returncode == 1
    log = agent_log(sample_app)
    calls = {e["task"]: e for e in log if e["event"] == "call.finished"}
    echo = calls["sampleapp.echo"]
    assert echo["argument_sizes"] == {"value": len(json.dumps(private_value))}
    assert "values" not in echo
    assert echo["outcome"] == "succeeded"
    assert echo["caller"].startswith(f"uid={os.geteuid()} pid=")
    assert echo["auth"] == "peer-uid"
    assert echo["duration_ms"] >= 0
    assert calls["sampleapp.greet"]["values"] == {"name": "ops"}  # the task opted in
    assert calls["sampleapp.boom"]["outcome"] == "failed"
    assert calls["sampleapp.boom"]["error"] == "ValueError: boom"
    assert private_value not in json.dumps(log)


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("operator@example")
    files = {
        "ca": directory / "ca.pem",
        "server": directory / "server.pem",
        "client": directory / "client.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return {k: str(v) for k, v in files.items()}


def test_tls_with_cookie(tls_files: dict[str, str]) -> None:
    with app_agent.start(
        node="tls://127.0.0.1:0", cookie="c" * 32, tls_cert=tls_files["server"]
    ) as agent:
        with rpcctl.connect(agent.node, cookie="c" * 32, tls_ca=tls_files["ca"]) as app:
            assert app.call("sampleapp.add", 40, 2) == 42
        result = run_rpcctl(
            "-n",
            agent.node,
            "--tls-ca",
            tls_files["ca"],
            "rpc",
            "add(1, 1)",
            env={"RPCCTL_COOKIE": "c" * 32},
        )
        assert (result.returncode, result.stdout) == (0, "2\n")
        untrusted = run_rpcctl("-n", agent.node, "ping", env={"RPCCTL_COOKIE": "c" * 32})
        assert untrusted.returncode == 5
        assert "TLS: the agent's certificate is not trusted" in untrusted.stderr
        no_cookie = run_rpcctl("-n", agent.node, "--tls-ca", tls_files["ca"], "ping")
        assert no_cookie.returncode == 5  # the cookie is still checked inside TLS


def test_mutual_tls(tls_files: dict[str, str]) -> None:
    with app_agent.start(
        node="tls://127.0.0.1:0",
        cookie="c" * 32,
        tls_cert=tls_files["server"],
        tls_client_ca=tls_files["ca"],
    ) as agent:
        env = {"RPCCTL_COOKIE": "c" * 32, "RPCCTL_TLS_CA": tls_files["ca"]}
        without = run_rpcctl("-n", agent.node, "ping", env=env)
        assert without.returncode == 5
        assert "TLS" in without.stderr
        with_cert = run_rpcctl("-n", agent.node, "--tls-cert", tls_files["client"], "ping", env=env)
        assert with_cert.stdout == "pong\n"


# -- hostile input ---------------------------------------------------------------------------


def resources(pid: int) -> tuple[int, int]:
    """(open file descriptors, resident KiB) of *pid*."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return fds, rss


def blast(path: str, payload: bytes, read: bool = True) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        try:
            sock.connect(path)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while read and sock.recv(65536):
                pass
        except OSError:
            pass  # being dropped mid-send is the agent doing its job


@pytest.fixture(scope="module")
def target(module_tmp: Path) -> Iterator[AppProcess]:
    tmp = module_tmp
    cookie = cookie_file(tmp)
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{tmp}/run/agent.sock",
        env={"RPCCTL_COOKIE_FILE": str(cookie), "RPCCTL_LOG_LEVEL": "error"},
    )
    app.cookie = cookie  # type: ignore[attr-defined]
    try:
        yield app
    finally:
        app.close()


def still_answers(app: AppProcess) -> None:
    result = run_rpcctl("-n", app.node, "--cookie-file", str(app.cookie), "ping")  # type: ignore[attr-defined]
    assert (result.returncode, result.stdout) == (0, "pong\n"), result.stderr
    assert app.alive()


def answers(app: AppProcess) -> None:
    """The cheap check after each generated input: a ping through the Python API."""
    security = Security.resolve(cookie_file=app.cookie)  # type: ignore[attr-defined]
    rpcctl.ping(app.node, timeout=DEADLINE, security=security)
    assert app.alive()


def settle(app: AppProcess, baseline: tuple[int, int]) -> None:
    """File descriptors back to the baseline, memory within a few MiB of it."""
    wait_until(lambda: resources(app.proc.pid)[0] <= baseline[0], what="descriptors to return")
    assert resources(app.proc.pid)[1] - baseline[1] < 16 * 1024


@pytest.fixture(scope="module")
def baseline(target: AppProcess) -> tuple[int, int]:
    still_answers(target)  # warm: one full connection served
    return resources(target.proc.pid)


FIXED_GARBAGE = [
    b"",
    b"\x00",
    os.urandom(64),
    os.urandom(70000),
    b"\n" * 5000,
    b"{" * 5000,
    b'{"rpcctl": 3, "op": "rpc"}',  # truncated: no newline, then EOF
    b'{"rpcctl": 3, "op": "rpc", "nonce": "' + b"a" * 32 + b'"}\n{"proof": null}',
    b'{"rpcctl": 3, "op": "ping", "nonce": "' + b"a" * 32 + b'"}\n' + b"x" * 100000,
    struct.pack("!LB", 0xFFFFFFFF, 0) + b"garbage",  # an RPyC frame header claiming 4 GiB
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello start
]


def test_fixed_garbage_never_hurts_the_agent(target: AppProcess, baseline: tuple[int, int]) -> None:
    path = wire.parse_node(target.node).path
    for payload in FIXED_GARBAGE:
        blast(path, payload)
        still_answers(target)
    settle(target, baseline)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=6000))
def test_random_bytes(target: AppProcess, baseline: tuple[int, int], payload: bytes) -> None:
    blast(wire.parse_node(target.node).path, payload)
    answers(target)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    hello=st.dictionaries(
        st.sampled_from(["rpcctl", "op", "nonce", "proof", "challenge", "identity", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=80),
            st.sampled_from([1, 3, "rpc", "ping", "a" * 32, "deploy"]),
            st.lists(st.integers(), max_size=3),
        ),
    ),
    second=st.binary(max_size=200),
)
def test_generated_handshakes(
    target: AppProcess, baseline: tuple[int, int], hello: dict[str, Any], second: bytes
) -> None:
    payload = (json.dumps(hello) + "\n").encode() + second
    blast(wire.parse_node(target.node).path, payload)
    answers(target)


def test_after_the_fuzzing_it_still_answers_and_releases_everything(
    target: AppProcess, baseline: tuple[int, int]
) -> None:
    still_answers(target)
    settle(target, baseline)


def test_garbage_after_a_valid_handshake(target: AppProcess, baseline: tuple[int, int]) -> None:
    """Even an authenticated peer sending broken RPyC frames ends only its own connection."""
    secret = target.cookie.read_text().strip().encode()  # type: ignore[attr-defined]
    path = wire.parse_node(target.node).path
    for frame in (
        os.urandom(300),
        struct.pack("!LB", 50, 0) + os.urandom(50),
        struct.pack("!LB", 10, 1) + b"not zlib!!",
        struct.pack("!LB", 0xFFFFFFF0, 0) + b"short",
    ):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(DEADLINE)
            sock.connect(path)
            nonce = cookies.new_nonce()
            sock.sendall(
                wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "op": "rpc", "nonce": nonce})
            )
            challenge = wire.decode_line(sock.recv(4096))["challenge"]
            proof = cookies.proof(secret, "client", nonce, challenge, "rpc")
            sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "proof": proof}))
            assert wire.decode_line(sock.recv(4096))["ok"] is True
            try:
                sock.sendall(frame)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass
        still_answers(target)
    settle(target, baseline)


def test_idle_connections_cannot_starve_real_callers(
    target: AppProcess, baseline: tuple[int, int]
) -> None:
    path = wire.parse_node(target.node).path
    idle = []
    try:
        for _ in range(100):  # far more than the 32 handshakes the agent keeps waiting
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            idle.append(sock)
        for _ in range(5):
            still_answers(target)
    finally:
        for sock in idle:
            sock.close()
    settle(target, baseline)


def test_tls_garbage_never_hurts_a_tls_agent(tls_files: dict[str, str]) -> None:
    with app_agent.start(
        node="tls://127.0.0.1:0", cookie="c" * 32, tls_cert=tls_files["server"]
    ) as agent:
        address = wire.parse_node(agent.node)
        for payload in (os.urandom(500), b"\x16\x03\x01\xff\xff" + os.urandom(100), b""):
            with socket.create_connection((address.host, address.port), timeout=DEADLINE) as sock:
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(4096):
                        pass
                except OSError:
                    pass
        # The agent still completes a verified TLS handshake, and still serves calls.
        context = ssl.create_default_context(cafile=tls_files["ca"])
        with (
            socket.create_connection((address.host, address.port), timeout=DEADLINE) as raw,
            context.wrap_socket(raw, server_hostname=address.host) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.getpeercert()["subject"]
        with rpcctl.connect(agent.node, cookie="c" * 32, tls_ca=tls_files["ca"]) as app:
            assert app.ping() == "pong"
