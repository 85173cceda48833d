"""Access control: identities with their own secrets and grants, the app's version, and
fleets targeted by what agents report (``--where``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from access_support import ACCESS, access_files, agent_log, start_app, write_secret

import app_agent
import rpcctl
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from app_agent import config, wire
from app_agent._server import access as _access
from app_agent.exceptions import ConfigurationError
from app_agent.wire import cookies
from conftest import DEADLINE, SAMPLEAPP, AppProcess, rpcctl_executable, run_rpcctl, wait_until
from rpcctl.client import Security

# -- the access file, checked strictly at start ----------------------------------------------


def load(directory: Path, text: str, node: str | None = None, **options: Any) -> Any:
    path = write_secret(directory / "access.toml", textwrap.dedent(text))
    return config.load(node or f"unix:{directory}/a.sock", access=str(path), **options)


def test_a_good_access_file(short_tmp: Path) -> None:
    access_files(short_tmp)
    loaded = config.load(f"unix:{short_tmp}/a.sock", access=str(short_tmp / "access.toml"))
    assert loaded.access is not None
    assert loaded.cookie is None
    assert list(loaded.access.identities) == ["deploy", "oncall", "probe"]
    deploy, oncall, probe = loaded.access.identities.values()
    assert deploy.cookie == b"deploy-cookie-0123456789abcdef"
    assert "cookie" not in repr(deploy)  # never printed with the identity
    # "*" is every grant and task, but never the console.
    assert deploy.may("read")
    assert deploy.may("stop")
    assert deploy.may_run("any.task")
    assert not deploy.may("console")
    assert oncall.may("read")
    assert not oncall.may("stop")
    assert not oncall.may("log_level")
    assert oncall.may_run("sampleapp.echo")
    assert oncall.may_run("sampleapp.whoami")
    assert not oncall.may_run("sampleapp.add")
    assert not oncall.may_run("sampleapp.echo2")
    assert not probe.may("read")
    assert not probe.may_run("sampleapp.echo")
    console = _access.Identity("ops", ("console",))
    assert console.may("console")
    assert not console.may("read")
    assert _access.UNRESTRICTED.may("console")
    assert _access.UNRESTRICTED.may_run("x.y")


def test_the_environment_names_the_access_file(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPCCTL_ACCESS", str(access_files(short_tmp)))
    monkeypatch.setenv("RPCCTL_COOKIE", "the clients' cookie, not the agent's")
    loaded = config.load(f"unix:{short_tmp}/a.sock")
    assert loaded.access is not None
    assert loaded.cookie is None


BAD_ACCESS = {
    "unknown top-level key": (
        '[identities.ops]\nunix_user = "root"\nallow = []\n',
        "identities: unknown key; expected [identity.NAME] tables only",
    ),
    "no identity": ("", "no [identity.NAME] table: an access file names at least one identity"),
    "unknown identity key": (
        '[identity.ops]\nunix_user = "root"\nallow = []\ncookie = "s3cret"\n',
        "[identity.ops] cookie: unknown key; expected one of allow, cookie_file, tls_subject, "
        "unix_user",
    ),
    "two credentials": (
        '[identity.ops]\nunix_user = "root"\ncookie_file = "ops.cookie"\nallow = []\n',
        "[identity.ops]: got cookie_file and unix_user; expected exactly one of cookie_file, "
        "tls_subject, unix_user",
    ),
    "no credential": ("[identity.ops]\nallow = []\n", "[identity.ops]: got none; expected"),
    "no allow": ('[identity.ops]\nunix_user = "root"\n', "[identity.ops] allow: missing;"),
    "allow not a list": (
        '[identity.ops]\nunix_user = "root"\nallow = "read"\n',
        "[identity.ops] allow: got 'read'; expected a list of grants",
    ),
    "unknown grant": (
        '[identity.ops]\nunix_user = "root"\nallow = ["raed"]\n',
        "[identity.ops] allow: unknown grant 'raed'; expected a list of grants (read, stop, "
        'log_level, console, drain, "*") and task patterns',
    ),
    "missing secret": (
        '[identity.ops]\ncookie_file = "absent.cookie"\nallow = []\n',
        "[identity.ops] cookie_file: cookie file {dir}/absent.cookie does not exist",
    ),
    "unknown user": (
        '[identity.ops]\nunix_user = "no-such-user-rpcctl"\nallow = []\n',
        "[identity.ops] unix_user: no such user 'no-such-user-rpcctl'",
    ),
    "bad subject": (
        '[identity.ci]\ntls_subject = "ci"\nallow = []\n',
        "[identity.ci] tls_subject: cannot read 'ci'; expected attributes",
    ),
    "bad name": (
        '[identity."a b"]\nunix_user = "root"\nallow = []\n',
        "[identity.a b]: 'a b' is not a valid identity name; expected 1 to 64 letters",
    ),
    "shared cookie": (
        '[identity.a]\ncookie_file = "ops.cookie"\nallow = []\n'
        '[identity.b]\ncookie_file = "./ops.cookie"\nallow = ["*"]\n',
        "[identity.a] and [identity.b] share a cookie: each identity needs its own",
    ),
    "shared user": (
        '[identity.a]\nunix_user = "root"\nallow = []\n[identity.b]\nunix_user = 0\nallow = []\n',
        "[identity.a] and [identity.b] share a UNIX user",
    ),
    "not TOML": ("[identity.ops\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_ACCESS))
def test_a_bad_access_file_is_refused_naming_the_key(short_tmp: Path, case: str) -> None:
    text, message = BAD_ACCESS[case]
    write_secret(short_tmp / "ops.cookie", "ops-cookie-0123456789\n")
    with pytest.raises(ConfigurationError) as caught:
        load(short_tmp, text)
    assert str(caught.value).startswith(f"{short_tmp}/access.toml: ")
    assert message.format(dir=short_tmp) in str(caught.value)


def test_loose_modes_and_missing_files_are_refused(short_tmp: Path) -> None:
    path = access_files(short_tmp)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match=r"\(mode 0644\); fix it with: chmod 600 "):
        config.load(f"unix:{short_tmp}/a.sock", access=str(path))
    path.chmod(0o600)
    (short_tmp / "oncall.cookie").chmod(0o640)
    with pytest.raises(ConfigurationError) as caught:
        config.load(f"unix:{short_tmp}/a.sock", access=str(path))
    assert "[identity.oncall] cookie_file: cookie file" in str(caught.value)
    assert "is accessible by group or others (mode 0640)" in str(caught.value)
    with pytest.raises(
        ConfigurationError, match=r"access file /nonexistent/x\.toml does not exist"
    ):
        config.load(f"unix:{short_tmp}/a.sock", access="/nonexistent/x.toml")


def test_what_goes_with_an_access_file(short_tmp: Path) -> None:
    path = str(access_files(short_tmp))
    with pytest.raises(ConfigurationError, match="an access file replaces the cookie"):
        config.load(f"unix:{short_tmp}/a.sock", access=path, cookie="c" * 32)
    # TCP with an access file needs no agent cookie: the identities have theirs.
    assert config.load("tcp://127.0.0.1:0", access=path).access is not None
    only_users = '[identity.ops]\nunix_user = "root"\nallow = ["read"]\n'
    with pytest.raises(ConfigurationError, match=r"no identity can connect: .* unix_user: "):
        load(short_tmp, only_users, node="tcp://127.0.0.1:0")
    mixed = ACCESS + '[identity.ops]\nunix_user = "root"\nallow = ["read"]\n'
    loaded = load(short_tmp, mixed, node="tcp://127.0.0.1:0")
    assert loaded.warnings == (
        f"{short_tmp}/access.toml: [identity.ops] unix_user: tcp://127.0.0.1:0 is not a UNIX "
        "socket",
    )


# -- identities end to end, over unix: and tcp:// --------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def guarded(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[AppProcess]:
    """sampleapp with the access file, on a UNIX socket or on TCP."""
    path = access_files(short_tmp)
    node = f"unix:{short_tmp}/run/agent.sock" if request.param == "unix" else "tcp://127.0.0.1:0"
    app = start_app(node, {"RPCCTL_ACCESS": str(path)})
    try:
        yield app
    finally:
        app.close()


def as_identity(
    app: AppProcess, name: str | None, cookie: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """rpcctl against *app* as *name* (None: none), with *cookie*'s file (None: none)."""
    options = ["-n", app.node]
    if name is not None:
        options += ["--identity", name]
    if cookie is not None:
        options += ["--cookie-file", str(app_dir(app) / f"{cookie}.cookie")]
    return run_rpcctl(*options, *args)


def app_dir(app: AppProcess) -> Path:
    return Path(app.env["RPCCTL_ACCESS"]).parent


def test_identities_get_what_they_are_granted(guarded: AppProcess) -> None:
    def oncall(*args: str) -> subprocess.CompletedProcess[str]:
        return as_identity(guarded, "oncall", "oncall", *args)

    assert oncall("ping").stdout == "pong\n"
    listed = oncall("tasks", "--json")
    assert [t["name"] for t in json.loads(listed.stdout)["result"]] == [
        "sampleapp.echo",
        "sampleapp.whoami",
    ]
    assert oncall("rpc", 'sampleapp.echo("hi")').stdout == "hi\n"
    assert json.loads(oncall("info", "--json").stdout)["result"]["app"] == "sampleapp"
    # The alias is checked by its full name, and refused as typed: which task an alias stands
    # for is not for an identity that may not run it to learn.
    for expr, typed in (("sampleapp.add(1, 2)", "sampleapp.add"), ("add(1, 2)", "add")):
        refused = oncall("rpc", expr)
        assert refused.returncode == 5
        assert refused.stderr == f"rpcctl: error: oncall may not run {typed}\n"
    # A task outside its patterns is refused whether it exists or not (no task oracle); one
    # inside them that does not exist is "no such task", with hints from its own tasks only.
    absent = oncall("rpc", "sampleapp.absent")
    assert (absent.returncode, absent.stderr) == (
        5,
        "rpcctl: error: oncall may not run sampleapp.absent\n",
    )
    typo = oncall("rpc", "sampleapp.whoam")
    assert typo.returncode == 6
    assert "did you mean sampleapp.whoami?" in typo.stderr
    stop = oncall("stop")
    assert stop.returncode == 5
    assert "oncall may not stop the app (that needs the stop grant)" in stop.stderr
    level = oncall("log-level", "DEBUG")
    assert level.returncode == 5
    assert "oncall may not set log levels (that needs the log_level grant)" in level.stderr
    assert oncall("log-level").returncode == 0  # showing levels is read

    deploy = as_identity(guarded, "deploy", "deploy", "rpc", "sampleapp.add(1, 2)")
    assert (deploy.returncode, deploy.stdout) == (0, "3\n")
    every = as_identity(guarded, "deploy", "deploy", "tasks", "--json")
    assert "sampleapp.add" in [t["name"] for t in json.loads(every.stdout)["result"]]

    # An identity without read: ping (the handshake says no more than a ping), nothing else.
    assert as_identity(guarded, "probe", "probe", "ping").returncode == 0
    info = as_identity(guarded, "probe", "probe", "info")
    assert info.returncode == 5
    assert "probe may not read info (that needs the read grant)" in info.stderr

    log = agent_log(guarded)
    calls = {e["task"]: e for e in log if e["event"] == "call.finished"}
    assert calls["sampleapp.echo"]["identity"] == "oncall"
    assert calls["sampleapp.add"]["identity"] == "deploy"
    assert calls["sampleapp.add"]["auth"].endswith("cookie")
    denied = [e for e in log if e["event"] == "access.denied"]
    # Logged at a bounded rate (5 every 10 s one by one, then a summary): six refusals.
    summarised = sum(e["denied"] for e in log if e["event"] == "access.denied_summary")
    assert len(denied) + summarised == 6
    assert {(e["identity"], e.get("task") or e.get("grant")) for e in denied} <= {
        ("oncall", "sampleapp.add"),
        ("oncall", "sampleapp.absent"),
        ("oncall", "stop"),
        ("oncall", "log_level"),
        ("probe", "read"),
    }
    assert [e.get("asked") for e in denied[:2]] == [None, "add"]
    assert all(e["caller"] and e["auth"] for e in denied)
    warnings = [e["problem"] for e in log if e["event"] == "access.warning"]
    assert warnings == [
        f"{app_dir(guarded)}/access.toml: [identity.oncall] allow: 'sampleapp.nothing_*' "
        "matches no registered task"
    ]
    started = next(e for e in log if e["event"] == "agent.started")
    assert started["identities"] == ["deploy", "oncall", "probe"]


def test_a_wrong_cookie_or_unknown_identity_is_refused_alike(guarded: AppProcess) -> None:
    refusal = (
        "identity {!r} refused: the agent knows no such identity, or our cookie is not that "
        "identity's (our cookie was read from --cookie-file"
    )
    borrowed = as_identity(guarded, "oncall", "deploy", "ping")  # another identity's cookie
    assert borrowed.returncode == 5
    assert refusal.format("oncall") in borrowed.stderr
    unknown = as_identity(guarded, "intruder", "deploy", "rpc", "sampleapp.add(1, 2)")
    assert unknown.returncode == 5
    assert refusal.format("intruder") in unknown.stderr
    nameless = as_identity(guarded, None, "deploy", "ping")
    assert nameless.returncode == 5
    assert "this agent requires an identity: name one with --identity NAME" in nameless.stderr
    no_cookie = as_identity(guarded, "deploy", None, "ping")
    assert no_cookie.returncode == 5
    assert "the agent requires a cookie" in no_cookie.stderr

    log = agent_log(guarded)
    refused = {e["reason"]: e for e in log if e["event"] == "connection.refused"}
    assert refused["unknown identity 'intruder'"]["identity"] == "intruder"
    wrong = "wrong cookie for identity 'oncall': the client's proof does not match"
    assert refused[wrong]["identity"] == "oncall"
    assert [e for e in log if e["event"] == "call.finished"] == []
    everything = json.dumps(log)
    for name in ("deploy", "oncall"):
        secret = (app_dir(guarded) / f"{name}.cookie").read_text().strip()
        assert secret not in everything


def test_unknown_identity_and_wrong_cookie_look_the_same_on_the_wire(
    short_tmp: Path,
) -> None:
    """The same challenge, the same refusal, byte for byte: no identity oracle."""
    app = start_app(
        f"unix:{short_tmp}/run/agent.sock", {"RPCCTL_ACCESS": str(access_files(short_tmp))}
    )
    try:
        path = wire.parse_node(app.node).path

        def exchange(name: str) -> tuple[set[str], bytes]:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(DEADLINE)
                sock.connect(path)
                hello = {"rpcctl": wire.PROTOCOL_VERSION, "op": "ping", "identity": name}
                sock.sendall(wire.encode_line({**hello, "nonce": cookies.new_nonce()}))
                challenge = wire.decode_line(sock.recv(4096))
                sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "proof": "0" * 64}))
                return set(challenge), sock.recv(4096)

        known, unknown = exchange("oncall"), exchange("intruder")
    finally:
        app.close()
    assert known == unknown
    assert known[0] == {"rpcctl", "challenge"}
    assert wire.decode_line(known[1]) == {
        "rpcctl": wire.PROTOCOL_VERSION,
        "ok": False,
        "kind": "auth",
        "reason": "wrong_cookie",
        "message": "unknown identity or wrong cookie",
    }


def test_jobs_belong_to_what_an_identity_may_run(short_tmp: Path) -> None:
    app = start_app(
        f"unix:{short_tmp}/run/agent.sock", {"RPCCTL_ACCESS": str(access_files(short_tmp))}
    )
    try:
        started = as_identity(app, "deploy", "deploy", "rpc", "--detach", "sampleapp.cancellable")
        job = started.stdout.strip()
        jobs = as_identity(app, "oncall", "oncall", "jobs", "--json")
        listed = json.loads(jobs.stdout)["result"]
        assert [(j["id"], j["caller"].split()[0]) for j in listed] == [(job, "deploy")]
        assert as_identity(app, "oncall", "oncall", "logs", job).returncode == 0  # read
        cancel = as_identity(app, "oncall", "oncall", "cancel", job)
        assert cancel.returncode == 5
        assert (
            f"oncall may not run sampleapp.cancellable (asked to cancel job {job})" in cancel.stderr
        )
        assert as_identity(app, "deploy", "deploy", "cancel", job).returncode == 0
        waited = as_identity(app, "probe", "probe", "wait", job)
        assert waited.returncode == 5  # probe may neither read nor run it
        assert f"probe may not read the output of job {job}" in waited.stderr
    finally:
        app.close()


def test_an_identity_without_an_access_file_is_refused(sample_app: AppProcess) -> None:
    result = sample_app.rpcctl("--identity", "ops", "ping")
    assert result.returncode == 5
    assert "this agent has no identities (no access file): drop --identity" in result.stderr
    bad = sample_app.rpcctl("--identity", "not a name", "ping")
    assert bad.returncode == 2
    assert "rpcctl: error: bad identity 'not a name': expected 1 to 64 letters" in bad.stderr


# -- the runner and hooks carry the identity -----------------------------------------------


def test_the_runner_and_its_hooks_use_the_config_identity(short_tmp: Path) -> None:
    from runner_support import Release

    path = access_files(short_tmp)
    r = Release(
        short_tmp,
        {"post_start/10.sh": '"$RPCCTL" rpc \'add(20, 22)\' > "$RPCCTL_ROOT/answer" 2>&1\n'},
        env={"RPCCTL_ACCESS": str(path)},
    )
    r.config.write_text(
        r.config.read_text().replace(
            "[app]\n", '[app]\ncookie_file = "deploy.cookie"\nidentity = "deploy"\n'
        )
    )
    r.start()
    try:
        wait_until(lambda: (short_tmp / "answer").exists() and (short_tmp / "answer").read_text())
        assert (short_tmp / "answer").read_text() == "42\n"
        assert r.rpcctl("ping").returncode == 0  # the config's identity, for us too
        assert run_rpcctl("-n", r.node, "ping").returncode == 5
        r.signal(15)
        assert r.wait()[0] == 0
    finally:
        r.close()


def test_a_bad_identity_in_the_config_is_a_usage_error(short_tmp: Path) -> None:
    config_file = short_tmp / "rpcctl.toml"
    config_file.write_text('[app]\ncommand = ["true"]\nidentity = "two words"\n')
    result = run_rpcctl("--config", str(config_file), "ping")
    assert result.returncode == 2
    assert "[app] identity: got 'two words'; expected a name of 1 to 64" in result.stderr


def test_identity_precedence(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rpcctl._settings import Settings

    config_file = short_tmp / "rpcctl.toml"
    config_file.write_text(
        '[app]\ncommand = ["true"]\nnode = "unix:run/a.sock"\nidentity = "from-config"\n'
    )
    monkeypatch.setenv("RPCCTL_IDENTITY", "from-env")
    monkeypatch.chdir(short_tmp)

    def resolved(**given: Any) -> str | None:
        settings = Settings()
        for key, value in given.items():
            setattr(settings, key, value)
        settings.address()
        return settings.security().identity

    assert resolved(identity="from-option", config_path=str(config_file)) == "from-option"
    assert resolved(config_path=str(config_file)) == "from-config"  # --config beats env
    assert resolved() == "from-env"  # env beats the config found upward
    monkeypatch.delenv("RPCCTL_IDENTITY")
    assert resolved() == "from-config"


def test_the_identity_is_bound_into_proofs_and_record_keys() -> None:
    args = (b"cookie", "client", "a" * 32, "b" * 32, "rpc")
    assert cookies.proof(*args, identity="oncall") != cookies.proof(*args, identity="deploy")
    assert cookies.proof(*args) != cookies.proof(*args, identity="x")
    keys = (b"cookie", "a" * 32, "b" * 32, "rpc")
    assert cookies.frame_keys(*keys, identity="a") != cookies.frame_keys(*keys, identity="b")
    assert wire.is_identity_name("ci.deploy-2_x")
    for bad in ("", "a\nb", "-x", "é", "x" * 65, 7, None):
        assert not wire.is_identity_name(bad)


# -- the app's version -----------------------------------------------------------------------


def test_the_version_is_reported_in_info_and_the_handshake(short_tmp: Path) -> None:
    app = start_app(f"unix:{short_tmp}/run/agent.sock", {"RPCCTL_APP_VERSION": "1.5.0"})
    try:
        info = app.rpcctl("info", "--json")
        assert json.loads(info.stdout)["result"]["version"] == "1.5.0"
        assert "version:  1.5.0" in app.rpcctl("info").stdout
        with rpcctl.connect(app.node) as conn:
            assert conn.handshake["version"] == "1.5.0"
            assert conn.handshake["app"] == "sampleapp"
        from rpcctl import _transport

        answer = _transport.ping(wire.parse_node(app.node), DEADLINE, Security())
        assert (answer["version"], answer["pong"]) == ("1.5.0", True)
    finally:
        app.close()


def test_where_the_version_comes_from(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCCTL_APP_VERSION", "1.0.0")
    with (
        app_agent.start(node=f"unix:{short_tmp}/a.sock", version="2.0.0") as agent,
        rpcctl.connect(agent.node) as conn,
    ):
        assert conn.handshake["version"] == "2.0.0"  # start() first
    with app_agent.start(node=f"unix:{short_tmp}/a.sock") as agent:
        assert agent.config.version == "1.0.0"  # then the environment
    monkeypatch.delenv("RPCCTL_APP_VERSION")
    # Then the distribution of the app's first task module (click, for the test's sake).
    with app_agent.start(node=f"unix:{short_tmp}/a.sock", tasks=["click.testing"]) as agent:
        assert agent.config.version == metadata.version("click")
    with app_agent.start(node=f"unix:{short_tmp}/a.sock") as agent:
        assert agent.config.version is None  # sampleapp's tasks: no distribution
        with rpcctl.connect(agent.node) as conn:
            assert conn.handshake["version"] is None
            assert conn.info()["version"] is None
    with pytest.raises(ConfigurationError, match="version must be a non-empty string"):
        config.load(f"unix:{short_tmp}/a.sock", version="")


def test_app_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    class Main:
        __spec__ = type("Spec", (), {"name": "myapp.__main__"})()

    monkeypatch.setitem(sys.modules, "__main__", Main)  # type: ignore[arg-type]
    found = ["app_agent.contrib.alembic", "__main__", "myapp.tasks", "other.x", "myapp.more"]
    assert config.app_modules(found) == ["myapp", "other"]
    assert config.distribution_version(["no_such_package_rpcctl", "click"]) == metadata.version(
        "click"
    )
    assert config.distribution_version(["no_such_package_rpcctl"]) is None


# -- fleets targeted with --where ------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[AppProcess]]:
    """Three replicas in a rolling deploy: n0 still on 1.4.0, n1 and n2 on 1.5.0."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="rpcctl-", dir="/tmp"))
    versions = ["1.4.0", "1.5.0", "1.5.0"]
    apps = [
        AppProcess(
            SAMPLEAPP,
            node=f"unix:{directory}/n{i}.sock",
            env={"SAMPLEAPP_NAME": f"n{i}", "RPCCTL_APP_VERSION": version},
            ready_line=None,
        )
        for i, version in enumerate(versions)
    ]
    try:
        for app in apps:
            app.wait_for_line("READY")
        yield apps
    finally:
        for app in apps:
            app.close()
        shutil.rmtree(directory, ignore_errors=True)


def fleet(replicas: list[AppProcess]) -> list[str]:
    return [arg for app in replicas for arg in ("-n", app.node)]


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_where_runs_on_exactly_the_matching_replicas(replicas: list[AppProcess]) -> None:
    n0, n1, n2 = (app.node for app in replicas)
    result = run_rpcctl(
        *fleet(replicas), "rpc", "--json", "--where", "version=1.5.0", "sampleapp.whoami"
    )
    assert result.returncode == 0, result.stderr
    *nodes, summary = json_lines(result)
    assert {line["node"]: line.get("result") for line in nodes} == {n0: None, n1: "n1", n2: "n2"}
    assert nodes[0] == {
        "node": n0,
        "skipped": "version is '1.4.0' (--where version=1.5.0)",
        "duration_s": nodes[0]["duration_s"],
    }
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (2, 0, 1)

    for _ in range(3):  # never the old replica, whichever answers first
        one = run_rpcctl(
            *fleet(replicas), "rpc", "--one", "--where", "version=1.5.0", "sampleapp.whoami"
        )
        assert one.returncode == 0, one.stderr
        ran = {"n1": n1, "n2": n2}[one.stdout.strip()]
        assert one.stderr == f"running on {ran}\n"
    old = run_rpcctl(
        *fleet(replicas), "rpc", "--one", "--where", "version=1.4.0", "sampleapp.whoami"
    )
    assert (old.returncode, old.stdout) == (0, "n0\n")

    table = run_rpcctl(*fleet(replicas), "ping", "--where", "version=1.4.0")
    lines = table.stdout.splitlines()
    assert lines[1].split()[:2] == [n0, "ok"]
    assert [line.split()[1] for line in lines[2:4]] == ["skipped", "skipped"]
    assert lines[-1].startswith("1/1 node ok in ")
    assert lines[-1].endswith("; 2 skipped by --where")

    # A key beyond the handshake's answer is asked of info, on the same connection.
    by_node = run_rpcctl(*fleet(replicas), "info", "--json", "--where", f"node={n2}")
    *infos, _summary = json_lines(by_node)
    assert [line["node"] for line in infos if "result" in line] == [n2]

    # The Python API, with the filter as a mapping.
    called = rpcctl.multicall(
        [a.node for a in replicas], "sampleapp.whoami", where={"version": "1.5.0"}
    )
    assert called.results == {n1: "n1", n2: "n2"}
    assert list(called.skipped) == [n0]
    assert called.exit_code() == 0


def test_a_filter_that_matches_nothing_says_which(replicas: list[AppProcess]) -> None:
    n0, n1, _n2 = (app.node for app in replicas)
    for args in (
        ["rpc", "--where", "version=9.9", "sampleapp.whoami"],
        ["rpc", "--one", "--where", "version=9.9", "sampleapp.whoami"],
        ["ping", "--where", "version=9.9"],
    ):
        result = run_rpcctl(*fleet(replicas), *args)
        assert result.returncode == 3, (args, result.stderr)
        assert (
            "rpcctl: error: --where version=9.9 matches no node "
            "(version: 1.5.0 on 2, 1.4.0 on 1)" in result.stderr
        )
    both = run_rpcctl(*fleet(replicas), "info", "--where", "version=1.4.0", "--where", f"node={n1}")
    assert both.returncode == 3
    assert (
        f"no node matches --where version=1.4.0 --where node={n1} at once "
        f"(version=1.4.0 on 1; node={n1} on 1)" in both.stderr
    )
    typo = run_rpcctl(*fleet(replicas), "ping", "--where", "verison=1.5.0")
    assert typo.returncode == 3
    assert "--where verison=1.5.0 matches no node (verison: (none) on 3)" in typo.stderr
    single = run_rpcctl("-n", n0, "rpc", "--where", "version=1.5.0", "sampleapp.whoami")
    assert single.returncode == 3
    bad = run_rpcctl(*fleet(replicas), "ping", "--where", "version")
    assert bad.returncode == 2
    assert "--where expects KEY=VALUE (such as version=1.5.0), got 'version'" in bad.stderr


def test_the_old_replica_ran_only_what_targeted_it(replicas: list[AppProcess]) -> None:
    """Of every call above, n0 (1.4.0) ran the one `--where version=1.4.0` aimed at it."""
    ran = [[e["task"] for e in agent_log(app) if e["event"] == "call.finished"] for app in replicas]
    assert ran[0] == ["sampleapp.whoami"]
    assert len(ran[1]) + len(ran[2]) == 2 + 3 + 2  # the fleet rpc, three --one, the API


def test_where_with_identities_over_tcp(short_tmp: Path) -> None:
    """A filter on the handshake's keys needs no grant: a migrate-only identity can target."""
    access = ACCESS + '[identity.ops]\ncookie_file = "ops.cookie"\nallow = ["sampleapp.whoami"]\n'
    path = access_files(short_tmp, access)
    apps = [
        start_app(
            "tcp://127.0.0.1:0",
            {"RPCCTL_ACCESS": str(path), "RPCCTL_APP_VERSION": v, "SAMPLEAPP_NAME": f"t{i}"},
        )
        for i, v in enumerate(["1.4.0", "1.5.0"])
    ]
    try:
        options = ["--identity", "ops", "--cookie-file", str(short_tmp / "ops.cookie")]
        one = run_rpcctl(
            *fleet(apps), *options, "rpc", "--one", "--where", "version=1.5.0", "sampleapp.whoami"
        )
        assert (one.returncode, one.stdout) == (0, "t1\n"), one.stderr
        # A key only info has needs the read grant, which ops lacks.
        info_key = run_rpcctl(
            *fleet(apps), *options, "rpc", "--where", "event_loop=false", "sampleapp.whoami"
        )
        assert info_key.returncode == 5
        assert "ops may not read info" in info_key.stdout
    finally:
        for app in apps:
            app.close()


def test_the_console_needs_its_own_grant_which_star_does_not_imply(short_tmp: Path) -> None:
    """`*` (deploy) runs every task but gets no console; `console` (ops) does, piped."""
    access = ACCESS + '\n[identity.ops]\ncookie_file = "ops.cookie"\nallow = ["console"]\n'
    app = start_app(
        f"unix:{short_tmp}/run/agent.sock",
        {"RPCCTL_ACCESS": str(access_files(short_tmp, access)), "RPCCTL_CONSOLE": "1"},
    )
    try:
        options = ["-n", app.node, "--identity"]
        star = subprocess.run(
            [rpcctl_executable(), *options, "deploy", "--cookie-file",
             str(short_tmp / "deploy.cookie"), "remote"],
            input="print(1)\n", capture_output=True, text=True, timeout=DEADLINE, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")},
        )  # fmt: skip
        assert star.returncode == 5, star.stderr
        assert "deploy may not use the console (that needs the console grant)" in star.stderr
        granted = subprocess.run(
            [rpcctl_executable(), *options, "ops", "--cookie-file",
             str(short_tmp / "ops.cookie"), "remote"],
            input="import os\nprint(os.getpid())\n", capture_output=True, text=True,
            timeout=DEADLINE, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")},
        )  # fmt: skip
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout.strip() == str(app.proc.pid)
    finally:
        log = agent_log(app)
        app.close()
    denied = [e for e in log if e["event"] == "access.denied"]
    assert [(e["identity"], e["grant"]) for e in denied] == [("deploy", "console")]
