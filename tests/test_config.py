"""rpcctl.toml and [tool.rpcctl]: discovery, validation errors (exit 2), node precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import app_agent
from rpcctl.cli import cli
from rpcctl.exceptions import ConfigError
from rpcctl.release import config

GOOD = """
[app]
name = "shop"
command = ["python", "-m", "shop"]
node = "unix:run/shop.sock"
env = { A = "1" }
ready_timeout = 5

[hooks]
post_start = "hooks/post"
timeout = 12.5

[hooks.on_failure]
post_start = "continue"
"""


def write(directory: Path, text: str, name: str = "rpcctl.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_good_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, GOOD))
    assert loaded.name == "shop"
    assert loaded.command == ["python", "-m", "shop"]
    assert loaded.node == f"unix:{tmp_path}/run/shop.sock"
    assert loaded.cwd == tmp_path / "."
    assert loaded.env == {"A": "1"}
    assert loaded.ready_timeout == 5.0
    assert loaded.stop_timeout == 10.0
    assert loaded.hook_dirs["post_start"] == tmp_path / "hooks/post"
    assert loaded.hook_dirs["pre_start"] == tmp_path / "rel/hooks/pre_start"
    assert loaded.hook_timeout == 12.5
    assert loaded.on_failure == {
        "pre_start": "stop",
        "post_start": "continue",
        "pre_stop": "continue",
        "post_stop": "continue",
    }


def test_defaults_name_and_node_from_the_directory(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, '[app]\ncommand = ["x"]\n'))
    assert loaded.name == tmp_path.name
    assert loaded.node == f"unix:{tmp_path}/run/{tmp_path.name}.sock"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[app]\ncomand = ["x"]\n',
            "[app] comand: unknown key; expected one of command, cookie_file, cwd",
        ),
        ("[app]\nname = 'x'\n", "[app] command: missing; expected the command that runs the app"),
        ('[app]\ncommand = "python -m x"\n', "[app] command: got 'python -m x'; expected"),
        ('[app]\ncommand = ["x"]\nnode = "/tmp/x.sock"\n', "[app] node: bad node address"),
        ('[app]\ncommand = ["x"]\nready_timeout = -1\n', "[app] ready_timeout: got -1"),
        ('[app]\ncommand = ["x"]\nenv = { A = 1 }\n', "[app] env: got {'A': 1}"),
        ('[app]\ncommand = ["x"]\n[hooks]\npre_strat = "x"\n', "[hooks] pre_strat: unknown key"),
        (
            '[app]\ncommand = ["x"]\n[hooks.on_failure]\npost_start = "ignore"\n',
            '[hooks.on_failure] post_start: got \'ignore\'; expected "stop" or "continue"',
        ),
        ('[app]\ncommand = ["x"]\n[other]\n', "other: unknown key; expected one of app, hooks"),
        ("[hooks]\n", "the [app] table is missing"),
        ("[app\n", "not valid TOML"),
    ],
)
def test_validation_errors_name_file_key_and_expectation(
    tmp_path: Path, text: str, says: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(str(path))
    assert says in caught.value.message


def test_hook_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "hooks").write_text("not a dir")
    path = write(tmp_path, '[app]\ncommand = ["x"]\n[hooks]\npre_start = "hooks"\n')
    with pytest.raises(ConfigError, match=r"\[hooks\] pre_start: .*hooks is not a directory"):
        config.load(path)


def test_found_upward_and_in_pyproject(tmp_path: Path) -> None:
    write(tmp_path, '[tool.rpcctl.app]\ncommand = ["x"]\nname = "py"\n', "pyproject.toml")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = config.find(deep)
    assert found == tmp_path / "pyproject.toml"
    assert config.load(found).name == "py"
    write(tmp_path / "a", '[app]\ncommand = ["x"]\nname = "near"\n')
    assert config.load(config.find(deep)).name == "near"  # type: ignore[arg-type]


def test_pyproject_without_tool_table_is_not_a_config(tmp_path: Path) -> None:
    write(tmp_path, "[project]\nname = 'x'\n", "pyproject.toml")
    assert config.find(tmp_path) is None or config.find(tmp_path) != tmp_path / "pyproject.toml"


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[app]\ncommand = ["x"]\nnode = "nonsense"\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "ping"])
    assert result.exit_code == 2
    assert f"rpcctl: error: {path}: [app] node: bad node address 'nonsense'" in result.stderr
    assert "expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT" in result.stderr


def test_every_command_finds_the_node_in_the_config(
    agent_in_process: app_agent.Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, f'[app]\ncommand = ["x"]\nnode = "{agent_in_process.node}"\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.delenv("RPCCTL_NODE", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["ping"]).stdout == "pong\n"
    assert runner.invoke(cli, ["rpc", "add(1, 2)"]).stdout == "3\n"
    assert runner.invoke(cli, ["pid"]).stdout == f"{os.getpid()}\n"


def test_node_precedence(
    agent_in_process: app_agent.Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--node, then --config, then RPCCTL_NODE, then the rpcctl.toml found upward."""
    dead = f"unix:{tmp_path}/dead.sock"
    good = agent_in_process.node
    found = write(tmp_path, f'[app]\ncommand = ["x"]\nnode = "{dead}"\n')
    explicit = write(tmp_path, f'[app]\ncommand = ["x"]\nnode = "{good}"\n', "other.toml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    monkeypatch.setenv("RPCCTL_NODE", good)
    assert runner.invoke(cli, ["ping"]).exit_code == 0  # env beats the found file
    monkeypatch.setenv("RPCCTL_NODE", dead)
    assert runner.invoke(cli, ["--config", str(explicit), "ping"]).exit_code == 0
    assert runner.invoke(cli, ["-n", good, "--config", str(found), "ping"]).exit_code == 0
    assert runner.invoke(cli, ["ping"]).exit_code == 3


def test_no_node_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RPCCTL_NODE", raising=False)
    result = CliRunner().invoke(cli, ["ping"])
    assert result.exit_code == 2
    assert "run inside a directory with rpcctl.toml" in result.stderr


def cookie(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text(f"{name}-secret-0123456789\n")
    path.chmod(0o600)
    return path


def resolved(monkeypatch: pytest.MonkeyPatch, **options: str) -> tuple[bytes | None, str]:
    from rpcctl._settings import Settings

    settings = Settings()
    settings.node = options.get("node")
    settings.config_path = options.get("config_path")
    settings.cookie_file = options.get("cookie_file")
    settings.address()
    security = settings.security()
    return security.cookie, settings.cookie_source


def test_cookie_precedence_follows_node_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--cookie-file, then --config's cookie_file, then RPCCTL_COOKIE(_FILE), then the
    cookie_file of the config found upward that gave the node."""
    app_cookie, other, given = (cookie(tmp_path, n) for n in ("app", "other", "given"))
    cfg = write(tmp_path, f'[app]\ncommand = ["x"]\ncookie_file = "{app_cookie}"\n')
    plain = write(tmp_path, '[app]\ncommand = ["x"]\n', "plain.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RPCCTL_NODE", raising=False)
    monkeypatch.delenv("RPCCTL_COOKIE_FILE", raising=False)
    monkeypatch.setenv("RPCCTL_COOKIE", "ambient-cookie-0123456789")
    in_cfg = f"cookie_file {app_cookie} in {cfg}"

    assert resolved(monkeypatch, config_path=str(cfg)) == (b"app-secret-0123456789", in_cfg)
    assert resolved(monkeypatch, config_path=str(cfg), node="unix:/x.sock")[1] == in_cfg
    assert resolved(monkeypatch, config_path=str(cfg), cookie_file=str(given)) == (
        b"given-secret-0123456789",
        f"--cookie-file {given}",
    )
    # Found upward, not given: the environment wins, as it does for the node.
    assert resolved(monkeypatch) == (b"ambient-cookie-0123456789", "$RPCCTL_COOKIE")
    # An explicit config without a cookie_file leaves the environment's.
    assert resolved(monkeypatch, config_path=str(plain))[1] == "$RPCCTL_COOKIE"
    monkeypatch.delenv("RPCCTL_COOKIE")
    monkeypatch.setenv("RPCCTL_COOKIE_FILE", str(other))
    assert resolved(monkeypatch) == (b"other-secret-0123456789", f"$RPCCTL_COOKIE_FILE ({other})")
    monkeypatch.delenv("RPCCTL_COOKIE_FILE")
    assert resolved(monkeypatch) == (b"app-secret-0123456789", in_cfg)
    assert resolved(monkeypatch, node="unix:/x.sock") == (None, "")
