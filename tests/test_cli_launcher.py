"""The CLI as an adopting user meets it, through the real executable and a real bin/NAME
launcher: hints that name the command typed, Ctrl-C, where the cookie comes from, and shell
completion of task names."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    DEADLINE,
    ROOT,
    SAMPLEAPP,
    AppProcess,
    rpcctl_executable,
    run_rpcctl,
    wait_until,
)
from rpcctl.release import scaffold


class Release:
    """A release directory made by `release init`, whose app is tests/apps/sampleapp.py."""

    def __init__(self, root: Path, cookie_file: Path | None = None) -> None:
        self.root = root
        scaffold.init("shop", root, module="sampleapp", launcher_rpcctl=rpcctl_executable())
        command = ", ".join(json.dumps(part) for part in SAMPLEAPP)
        cookie = f'cookie_file = "{cookie_file}"\n' if cookie_file else ""
        (root / "rpcctl.toml").write_text(
            f'[app]\nname = "shop"\ncommand = [{command}]\nnode = "unix:run/shop.sock"\n{cookie}'
        )
        self.node = f"unix:{root}/run/shop.sock"
        self.app: AppProcess | None = None

    def launch(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `bin/shop ARGS` as typed in the release root (or *cwd*, by its full path)."""
        command = "bin/shop" if cwd is None else str(self.root / "bin" / "shop")
        return subprocess.run(
            [command, *args],
            cwd=cwd or self.root,
            env=clean_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=DEADLINE * 3,
            check=False,
        )

    def start_app(self, **env: str) -> AppProcess:
        self.app = AppProcess(SAMPLEAPP, node=self.node, env=env)
        return self.app


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "_RPCCTL_"))}
    env.update(extra)
    return env


@pytest.fixture
def release(short_tmp: Path) -> Iterator[Release]:
    made = Release(short_tmp)
    try:
        yield made
    finally:
        if made.app is not None:
            made.app.close()


def write_cookie(path: Path, secret: str) -> Path:
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


# -- hints name the command the user typed ---------------------------------------------------


def test_an_app_that_is_not_running_gets_the_command_that_starts_it(release: Release) -> None:
    typed = release.launch("ping")
    assert typed.returncode == 3
    assert "no agent is running" in typed.stderr
    assert "start it with `bin/shop start`" in typed.stderr
    # By its full path from elsewhere: the hint is what was typed.
    elsewhere = release.root / "run"
    elsewhere.mkdir(exist_ok=True)
    full = release.launch("ping", "--wait", "0", cwd=elsewhere)
    assert full.returncode == 3
    assert f"start it with `{release.root}/bin/shop start`" in full.stderr
    # rpcctl inside the release finds its rpcctl.toml: `rpcctl start` starts it.
    plain = run_rpcctl("tasks", cwd=release.root)
    assert plain.returncode == 3
    assert "start it with `rpcctl start`" in plain.stderr
    config = release.root / "rpcctl.toml"
    given = run_rpcctl("--config", str(config), "ping")
    assert given.returncode == 3
    assert f"start it with `rpcctl --config {config} start`" in given.stderr
    # A node given by hand is not known to be a release: no start hint.
    direct = run_rpcctl("-n", release.node, "ping")
    assert direct.returncode == 3
    assert "start it" not in direct.stderr


def test_hints_through_the_launcher_name_the_launcher(release: Release) -> None:
    release.start_app()
    missing = release.launch("rpc", "nope.task")
    assert missing.returncode == 6
    assert "`bin/shop tasks` lists the registered tasks" in missing.stderr
    detached = release.launch("rpc", "--detach", "sampleapp.cancellable(60)")
    assert detached.returncode == 0, detached.stderr
    job = detached.stdout.strip()
    assert f"follow it with `bin/shop logs {job} --follow`" in detached.stderr
    timed_out = release.launch("wait", job, "--timeout", "0.01")
    assert timed_out.returncode == 4
    assert f"`bin/shop logs {job} --follow`" in timed_out.stderr
    assert f"`bin/shop wait {job}`" in timed_out.stderr
    assert "rpcctl " not in timed_out.stderr.replace("rpcctl: error:", "")
    assert release.launch("cancel", job).returncode == 0


def test_the_launcher_name_does_not_leak_into_the_app_or_its_hooks(release: Release) -> None:
    """`bin/shop start` runs the app and hooks with RPCCTL_PROG unset: an rpcctl they run
    names itself."""
    hook = release.root / "rel" / "hooks" / "post_start" / "20-env.sh"
    hook.write_text(f'echo "${{RPCCTL_PROG:-unset}}" > {release.root}/prog\n')
    (release.root / "rel" / "hooks" / "post_start" / "10-migrate.sh").unlink()
    runner = subprocess.Popen(
        ["bin/shop", "start"],
        cwd=release.root,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (release.root / "prog").exists(), what="the post_start hook")
        wait_until(lambda: (release.root / "prog").read_text().strip() != "")
        assert (release.root / "prog").read_text().strip() == "unset"
        assert release.launch("stop").returncode == 0
        runner.wait(DEADLINE)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


# -- Ctrl-C on rpc -----------------------------------------------------------------------------


def running_jobs(node: str) -> list[dict[str, Any]]:
    listed = run_rpcctl("-n", node, "jobs", "--json")
    return [j for j in json.loads(listed.stdout)["result"] if j["state"] == "running"]


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_on_rpc_exits_130_and_names_the_job(sample_app: AppProcess, as_json: bool) -> None:
    node = sample_app.node
    command = [rpcctl_executable(), "-n", node, "rpc", "sampleapp.cancellable(60)"]
    follower = subprocess.Popen(
        [*command, "--json"] if as_json else command,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: running_jobs(node), what="the job to start")
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=DEADLINE)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    [job] = running_jobs(node)  # it goes on
    assert follower.returncode == 130, err
    assert "Aborted!" not in err
    prog = "rpcctl"
    assert err.splitlines()[-1] == (
        f"rpcctl: interrupted; job {job['id']} goes on running in the app: follow it with "
        f"`{prog} logs {job['id']} -f`, or stop it with `{prog} cancel {job['id']}`"
    )
    if as_json:
        envelope = json.loads(out.splitlines()[-1])
        assert envelope["ok"] is False
        assert envelope["error"]["kind"] == "interrupted"
        assert envelope["error"]["exit_code"] == 130
        assert envelope["error"]["job"] == job["id"]
    assert run_rpcctl("-n", node, "cancel", job["id"]).returncode == 0


def test_ctrl_c_on_ping_wait_exits_130(short_tmp: Path) -> None:
    """The click-free ping path too: no traceback, exit 130."""
    hole = socket.socket(socket.AF_UNIX)
    hole.bind(str(short_tmp / "hole.sock"))
    hole.listen(8)
    hole.settimeout(DEADLINE)
    waiting = subprocess.Popen(
        [rpcctl_executable(), "-n", f"unix:{short_tmp}/hole.sock", "ping", "--wait", "60"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Its first try connects (and then waits for a handshake that never comes): it is
        # inside its waiting loop.
        connection, _ = hole.accept()
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=DEADLINE)
        connection.close()
    finally:
        hole.close()
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert (waiting.returncode, out) == (130, "")
    assert err == "rpcctl: interrupted\n"


# -- where the cookie comes from ---------------------------------------------------------------


@pytest.fixture
def guarded_release(short_tmp: Path) -> Iterator[Release]:
    cookie = write_cookie(short_tmp / "cookie", "the-release-cookie-0123456789")
    made = Release(short_tmp, cookie_file=cookie)
    made.start_app(RPCCTL_COOKIE_FILE=str(cookie))
    try:
        yield made
    finally:
        assert made.app is not None
        made.app.close()


def test_an_explicit_config_cookie_beats_the_environment(guarded_release: Release) -> None:
    """Another app's RPCCTL_COOKIE is exported in this shell: bin/shop still reaches its own
    app with its own cookie, as it does with its own node."""
    ambient = {"RPCCTL_COOKIE": "another-apps-cookie-0123456789"}
    assert guarded_release.launch("ping", env=ambient).stdout == "pong\n"  # the fast path
    tasks = guarded_release.launch("tasks", env=ambient)  # click's path
    assert tasks.returncode == 0, tasks.stderr
    config = str(guarded_release.root / "rpcctl.toml")
    explicit = run_rpcctl("--config", config, "rpc", "add(1, 2)", env=ambient)
    assert explicit.stdout == "3\n", explicit.stderr


def test_a_refused_cookie_says_where_it_was_read_from(
    guarded_release: Release, short_tmp: Path
) -> None:
    ambient = {"RPCCTL_COOKIE": "another-apps-cookie-0123456789"}
    # Found upward (not given): the environment wins, as it does for the node.
    found = run_rpcctl("ping", cwd=guarded_release.root, env=ambient)
    assert found.returncode == 5
    assert found.stderr.endswith(
        "wrong cookie: the agent refused our proof (our cookie was read from $RPCCTL_COOKIE)\n"
    )
    wrong = write_cookie(short_tmp / "wrong", "not-the-cookie-0123456789")
    given = guarded_release.launch("--cookie-file", str(wrong), "tasks")
    assert given.returncode == 5
    assert f"(our cookie was read from --cookie-file {wrong})" in given.stderr
    by_file = run_rpcctl(
        "-n", guarded_release.node, "tasks", env={"RPCCTL_COOKIE_FILE": str(wrong)}
    )
    assert by_file.returncode == 5
    assert f"(our cookie was read from $RPCCTL_COOKIE_FILE ({wrong}))" in by_file.stderr
    none = run_rpcctl("-n", guarded_release.node, "ping")
    assert none.returncode == 5
    assert "read from" not in none.stderr  # there was no cookie to read


# -- completion of task names ------------------------------------------------------------------


def complete(
    argv0: str, words: str, cwd: Path | None = None, executable: str | None = None
) -> subprocess.CompletedProcess[str]:
    """What bash's completion function (click's) runs for COMP_WORDS=*words*."""
    return subprocess.run(
        [executable or argv0],
        env=clean_env(
            _RPCCTL_COMPLETE="bash_complete",
            COMP_WORDS=f"{argv0} {words}",
            COMP_CWORD=str(len(words.split(" "))),
        ),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_rpc_completes_task_names_and_aliases(sample_app: AppProcess) -> None:
    result = complete(
        "rpcctl", f"-n {sample_app.node} rpc sampleapp.ec", executable=rpcctl_executable()
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "plain,sampleapp.echo\n", "")
    alias = complete("rpcctl", f"-n {sample_app.node} rpc ad", executable=rpcctl_executable())
    assert alias.stdout.splitlines() == ["plain,add"]
    second = complete(
        "rpcctl", f"-n {sample_app.node} rpc add sampleapp.", executable=rpcctl_executable()
    )
    assert second.stdout.strip() == ""  # a task name only as the first word


def test_completion_through_the_launcher(release: Release) -> None:
    release.start_app()
    elsewhere = release.root / "run"
    result = complete(str(release.root / "bin" / "shop"), "rpc sampleapp.gr", cwd=elsewhere)
    assert (result.returncode, result.stdout, result.stderr) == (0, "plain,sampleapp.greet\n", "")


def test_completion_is_quiet_when_the_app_is_down(release: Release) -> None:
    result = complete("bin/shop", "rpc sampleapp.", cwd=release.root)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")


def test_completion_of_other_words_still_works(sample_app: AppProcess) -> None:
    result = complete("rpcctl", f"-n {sample_app.node} ta", executable=rpcctl_executable())
    assert result.stdout.splitlines() == ["plain,tasks"]


def test_the_documented_bash_completion_completes_through_the_launcher(release: Release) -> None:
    """docs/ecosystem.md's bash lines, run in bash as written (bin/myapp is bin/shop here)."""
    doc = (ROOT / "docs" / "ecosystem.md").read_text()
    lines = [
        line.strip().split("  #")[0].replace("bin/myapp", "bin/shop")
        for line in doc.splitlines()
        if "bash_source" in line or "-F _rpcctl_completion" in line
    ]
    assert len(lines) == 2, lines
    release.start_app()
    script = "\n".join(
        [
            *lines,
            "COMP_WORDS=(bin/shop rpc sampleapp.gr); COMP_CWORD=2",
            "_rpcctl_completion bin/shop",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    bin_dir = str(Path(rpcctl_executable()).parent)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=release.root,
        env=clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "sampleapp.greet\n", "")
