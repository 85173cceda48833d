"""Whom a UNIX socket is trusted to (issue #20 items 1-2): an impostor through a directory
another user made before the app started is refused by client and agent (OpenSSH
StrictModes), and the runner's release lock never follows a planted link."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import app_agent
import rpcctl
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from app_agent.exceptions import ConfigurationError
from conftest import (
    DEADLINE,
    NOBODY,
    AppProcess,
    as_user,
    needs_root,
    run_rpcctl,
)


def connect_as(app: AppProcess, identity: str) -> rpcctl.Client:
    cookie = Path(app.env["RPCCTL_ACCESS"]).parent / f"{identity}.cookie"
    return rpcctl.connect(app.node, identity=identity, cookie_file=cookie, timeout=DEADLINE)


# -- 1. an impostor through a pre-created directory ------------------------------------------


@contextlib.contextmanager
def agent_as_nobody(node: str) -> Iterator[None]:
    """sampleapp's tasks served by an agent in a forked child that has become nobody."""
    # Loaded first: the child cannot read root's home (the interpreter's stdlib) any more.
    importlib.import_module("app_agent._agent")
    importlib.import_module("app_agent._service")
    stop_r, stop_w = os.pipe()

    def app() -> None:
        os.close(stop_w)
        agent = app_agent.start(node=node, app="as-nobody", version="1")
        os.read(stop_r, 1)  # until the test closes the pipe
        agent.stop()

    child = as_user(NOBODY, app)
    os.close(stop_r)
    try:
        wait = run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE))
        assert (wait.returncode, wait.stdout) == (0, "pong\n"), wait.stderr
        yield
    finally:
        os.close(stop_w)
        os.waitpid(child, 0)


@needs_root
def test_an_impostor_in_a_directory_it_made_under_tmp_gets_nothing(short_tmp: Path) -> None:
    """Another user makes a 0700 directory where the app's socket will be, in a directory
    anyone may write (here a copy of /tmp: world-writable and sticky), and listens there:
    root's client refuses it before sending a byte, naming the directory and its owner."""
    short_tmp.chmod(0o1777)
    shared = short_tmp / "shared-app"
    path = shared / "agent.sock"
    ready_r, ready_w = os.pipe()
    received_r, received_w = os.pipe()

    def impostor() -> None:
        os.mkdir(shared, 0o700)
        listener = socket.socket(socket.AF_UNIX)
        listener.settimeout(DEADLINE)
        listener.bind(str(path))
        listener.listen()
        os.write(ready_w, b"!")
        conn, _ = listener.accept()
        conn.settimeout(DEADLINE)
        os.write(received_w, b"got:" + conn.recv(4096))

    child = as_user(NOBODY, impostor)
    os.close(ready_w)
    os.close(received_w)
    try:
        assert os.read(ready_r, 1) == b"!"
        result = run_rpcctl("-n", f"unix:{path}", "rpc", "add(1, 2)", timeout=DEADLINE)
    finally:
        with os.fdopen(received_r, "rb") as pipe:
            got = pipe.read()
        os.close(ready_r)
        os.waitpid(child, 0)
    assert result.returncode == 5, result.stderr
    assert f"uid {NOBODY} (nobody), the owner of the socket's directory {shared}" in result.stderr
    assert f"but {short_tmp} above it is writable by anyone (mode 1777)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert got == b"got:"  # it saw a connection, then nothing: no hello, no call


@needs_root
@pytest.mark.parametrize(
    ("mode", "owner", "says"),
    [
        (0o775, 0, "writable by its group (mode 0775)"),
        (0o757, 0, "writable by anyone (mode 0757)"),
        (0o755, 1, "writable by its owner, uid 1"),
    ],
)
def test_the_directory_owner_is_trusted_only_when_nobody_else_could_have_made_it(
    run_tmp: Path, mode: int, owner: int, says: str
) -> None:
    """The app runs as nobody in nobody's 0700 directory under a parent only root can write
    (as systemd's RuntimeDirectory makes /run/myapp): root's client trusts it, and the agent
    admits root. The trust lasts only while every parent up to / is writable by root and
    nobody alone."""
    run_dir = run_tmp / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    node = f"unix:{run_dir}/agent.sock"
    with agent_as_nobody(node):
        assert run_rpcctl("-n", node, "rpc", "add(1, 2)").stdout == "3\n"
        os.chown(run_tmp, owner, 0)
        run_tmp.chmod(mode)
        refused = run_rpcctl("-n", node, "rpc", "add(1, 2)")
        run_tmp.chmod(0o755)
        os.chown(run_tmp, 0, 0)
        assert refused.returncode == 5, refused.stderr
        assert f"the owner of the socket's directory {run_dir}, but {run_tmp} above it" in (
            refused.stderr
        )
        assert says in refused.stderr
        assert run_rpcctl("-n", node, "rpc", "add(1, 2)").stdout == "3\n"


@needs_root
def test_the_agent_refuses_to_listen_in_another_users_directory(short_tmp: Path) -> None:
    theirs = short_tmp / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(ConfigurationError) as refused:
        app_agent.start(node=f"unix:{theirs}/agent.sock")
    assert str(refused.value) == (
        f"unix:{theirs}/agent.sock: refusing to listen in {theirs}: it belongs to uid {NOBODY} "
        "(nobody), not to this process (uid 0) or root, so that user could replace the socket; "
        "remove the directory or pick another"
    )
    assert not (theirs / "agent.sock").exists()
    assert app_agent.current() is None


# -- 2. the runner's lock never follows a planted link -----------------------------------------


def release_in(directory: Path) -> Path:
    """An rpcctl.toml whose socket (and so its lock, app.sock.lock) is in *directory*; its
    app exits at once, so a runner that got past the lock ends quickly."""
    config = directory / "rpcctl.toml"
    config.write_text(
        '[app]\nname = "victim"\ncommand = ["true"]\n'
        f'node = "unix:{directory}/app.sock"\nready_timeout = 5\n'
    )
    return config


@needs_root
def test_the_release_lock_never_follows_a_planted_symlink(short_tmp: Path) -> None:
    """Another user links app.sock.lock, in a directory anyone may write, to a file of
    root's: root's `start` refuses it and leaves the file as it was."""
    short_tmp.chmod(0o1777)
    victim = short_tmp / "victim"
    victim.write_text("precious\n")
    lock = short_tmp / "app.sock.lock"
    child = as_user(NOBODY, lambda: os.symlink(victim, lock))
    assert os.waitpid(child, 0)[1] == 0
    result = run_rpcctl("--config", str(release_in(short_tmp)), "start", timeout=DEADLINE)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"rpcctl: error: cannot open the release lock {lock}: it is a symbolic link\n"
    )
    assert victim.read_text() == "precious\n"


@needs_root
@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        ("another user's file", f"it belongs to uid {NOBODY}, not to us (uid 0)"),
        ("a hard link", "it has 2 hard links"),
        ("a FIFO", "it is not a regular file"),
        ("a long file", "it holds 100 bytes: not a lock file"),
    ],
)
def test_the_release_lock_must_be_a_lock_file_of_ours(
    short_tmp: Path, plant: str, problem: str
) -> None:
    lock = short_tmp / "app.sock.lock"
    victim = short_tmp / "victim"
    victim.write_text("x" * 100)
    if plant == "another user's file":
        lock.write_text("123\n")
        os.chown(lock, NOBODY, NOBODY)
    elif plant == "a hard link":
        os.link(victim, lock)
    elif plant == "a FIFO":
        os.mkfifo(lock, 0o600)
    else:
        lock.write_text("x" * 100)
    before = lock.stat()
    result = run_rpcctl("--config", str(release_in(short_tmp)), "start", timeout=DEADLINE)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"rpcctl: error: refusing the release lock {lock}: {problem}; "
        "remove it if it is not yours\n"
    )
    after = lock.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert victim.read_text() == "x" * 100


def test_a_lock_file_left_by_an_earlier_run_is_reused_never_truncated(short_tmp: Path) -> None:
    lock = short_tmp / "app.sock.lock"
    lock.write_text("1234567\n")  # an earlier runner's pid, longer than some pids
    lock.chmod(0o600)
    run_rpcctl("--config", str(release_in(short_tmp)), "start", timeout=DEADLINE)
    text = lock.read_text()
    assert len(text) == len("1234567\n")
    assert text.endswith("\n")
    assert text.split()[0].isdigit()
    assert text.split()[0] != "1234567"
