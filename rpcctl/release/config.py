"""``rpcctl.toml`` (or ``[tool.rpcctl]`` in pyproject.toml): finding, reading, validating.

Every setting and its default lives here. Relative paths are relative to the config file.
A config error names the file, the key and what is expected, and is a usage error (exit 2).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Final

from app_agent import wire
from rpcctl._nodes import parse_node
from rpcctl.exceptions import ConfigError

CONFIG_NAME: Final = "rpcctl.toml"
PYTHON_NAMES: Final = ("python", "python3")
"""In ``[app] command`` (its first word) and ``[app] python``: the interpreter rpcctl itself
runs under (its virtualenv's), whatever PATH says."""
HOOK_EVENTS: Final = ("pre_start", "post_start", "pre_stop", "post_stop")
POLICIES: Final = ("stop", "continue")
DEFAULT_POLICY: Final = {
    "pre_start": "stop",
    "post_start": "stop",
    "pre_stop": "continue",
    "post_stop": "continue",
}

_APP_KEYS: Final = {
    "name": "the app's name (a string)",
    "command": 'the command that runs the app, a list of strings: ["python", "-m", "myapp"]',
    "node": "the agent's address: unix:PATH (relative to this file), tcp://HOST:PORT or "
    "tls://HOST:PORT",
    "cwd": "the app's working directory, relative to this file (default: this file's directory)",
    "env": "extra environment variables for the app and hooks, a table of strings",
    "cookie_file": "the owner-only file holding the cookie, relative to this file",
    "identity": "the identity clients name to an agent with an access file (cookie_file "
    "then holds that identity's cookie)",
    "ready_timeout": "seconds to wait for the agent to answer ping after start (a number > 0)",
    "stop_timeout": "seconds between SIGTERM and SIGKILL when stopping (a number > 0)",
    "tasks": "the modules `rpcctl eval` imports to find tasks by alias, a list of module names: "
    '["myapp.tasks"]',
    "python": "the interpreter `rpcctl eval` runs tasks with: python (rpcctl's own), a path "
    "relative to this file, or a name on PATH",
    "locks": "where task locks live, for the app and `rpcctl eval` unless RPCCTL_LOCKS says "
    "otherwise: memory, file:DIR (relative to this file) or postgresql://...",
}
_HOOK_KEYS: Final = {
    **{event: f"the directory of {event} scripts, relative to this file" for event in HOOK_EVENTS},
    "timeout": "seconds one hook script may run before it is killed (a number > 0)",
    "on_failure": 'a table: event = "stop" or "continue"',
}


class Config:
    """A validated release configuration."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.root = path.parent
        app = _table(path, data, "app", required=True)
        hooks = _table(path, data, "hooks", required=False)
        _no_unknown(path, data, {"app": "", "hooks": ""}, "")
        _no_unknown(path, app, _APP_KEYS, "app")
        _no_unknown(path, hooks, _HOOK_KEYS, "hooks")

        self.name: str = _string(path, app, "app", "name", default=self.root.name)
        self.command: list[str] = _command(path, app)
        node_text = _string(path, app, "app", "node", default=f"unix:run/{self.name}.sock")
        try:
            self.address = parse_node(node_text, base_dir=str(self.root))
        except ConfigError as exc:
            raise _error(path, "app", "node", _APP_KEYS["node"], exc.message) from None
        self.cwd: Path = self.root / _string(path, app, "app", "cwd", default=".")
        self.env: dict[str, str] = _env(path, app)
        cookie_file = app.get("cookie_file")
        self.cookie_file: Path | None = (
            self.root / _string(path, app, "app", "cookie_file", default="")
            if cookie_file is not None
            else None
        )
        self.identity: str | None = None
        if "identity" in app:
            identity = app["identity"]
            if not wire.is_identity_name(identity):
                problem = f"got {identity!r}"
                expected = "a name of 1 to 64 letters, digits, _ . or -: " + _APP_KEYS["identity"]
                raise _error(path, "app", "identity", expected, problem)
            self.identity = identity
        self.ready_timeout = _seconds(path, app, "app", "ready_timeout", 30.0)
        self.stop_timeout = _seconds(path, app, "app", "stop_timeout", 10.0)
        self.tasks: list[str] = _modules(path, app)
        self.python: str | None = (
            _string(path, app, "app", "python", default="") if "python" in app else None
        )
        self.locks: str | None = _locks(path, app, self.root)

        self.hook_dirs: dict[str, Path] = {}
        for event in HOOK_EVENTS:
            default = f"rel/hooks/{event}"
            where = self.root / _string(path, hooks, "hooks", event, default=default)
            if where.exists() and not where.is_dir():
                raise _error(path, "hooks", event, _HOOK_KEYS[event], f"{where} is not a directory")
            self.hook_dirs[event] = where
        self.hook_timeout = _seconds(path, hooks, "hooks", "timeout", 300.0)
        self.on_failure: dict[str, str] = dict(DEFAULT_POLICY)
        policies = _table(path, hooks, "on_failure", required=False, where="hooks.on_failure")
        for event, policy in policies.items():
            if event not in HOOK_EVENTS:
                expected = f"one of {', '.join(HOOK_EVENTS)}"
                raise _error(path, "hooks.on_failure", event, expected, "unknown hook event")
            if policy not in POLICIES:
                raise _error(
                    path, "hooks.on_failure", event, '"stop" or "continue"', f"got {policy!r}"
                )
            self.on_failure[event] = policy

    @property
    def node(self) -> str:
        return str(self.address)


def find(start: Path | None = None) -> Path | None:
    """The nearest rpcctl.toml, or pyproject.toml with [tool.rpcctl], from *start* upward."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and _has_tool_table(pyproject):
            return pyproject
    return None


def load(path: Path) -> Config:
    """Read and validate *path* (an rpcctl.toml or a pyproject.toml with [tool.rpcctl])."""
    path = path.resolve()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        msg = f"{path}: no such config file"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML ({exc})"
        raise ConfigError(msg) from None
    if path.name == "pyproject.toml":
        tool = data.get("tool", {}).get("rpcctl")
        if not isinstance(tool, dict):
            msg = f"{path}: has no [tool.rpcctl] table"
            raise ConfigError(msg)
        data = tool
    return Config(path, data)


def _has_tool_table(pyproject: Path) -> bool:
    try:
        with pyproject.open("rb") as f:
            return isinstance(tomllib.load(f).get("tool", {}).get("rpcctl"), dict)
    except (OSError, tomllib.TOMLDecodeError):
        return False


# -- validation helpers --------------------------------------------------------------------


def _error(path: Path, table: str, key: str, expected: str, problem: str) -> ConfigError:
    where = f"[{table}] {key}" if table else key
    return ConfigError(f"{path}: {where}: {problem}; expected {expected}")


def _table(
    path: Path, data: dict[str, Any], key: str, required: bool, where: str | None = None
) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            msg = f"{path}: the [{where or key}] table is missing"
            raise ConfigError(msg)
        return {}
    if not isinstance(value, dict):
        msg = f"{path}: {where or key} must be a table, got {type(value).__name__}"
        raise ConfigError(msg)
    return value


def _no_unknown(path: Path, data: dict[str, Any], known: dict[str, str], table: str) -> None:
    for key in data:
        if key not in known:
            expected = "one of " + ", ".join(sorted(known))
            raise _error(path, table, key, expected, "unknown key")


def _string(path: Path, data: dict[str, Any], table: str, key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        expected = _APP_KEYS.get(key) or _HOOK_KEYS.get(key, "a string")
        raise _error(path, table, key, expected, f"got {value!r}")
    return value


def _seconds(path: Path, data: dict[str, Any], table: str, key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        expected = _APP_KEYS.get(key) or _HOOK_KEYS[key]
        raise _error(path, table, key, expected, f"got {value!r}")
    return float(value)


def _command(path: Path, app: dict[str, Any]) -> list[str]:
    if "command" not in app:
        raise _error(path, "app", "command", _APP_KEYS["command"], "missing")
    command = app["command"]
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) and part for part in command)
    ):
        raise _error(path, "app", "command", _APP_KEYS["command"], f"got {command!r}")
    return command


def _env(path: Path, app: dict[str, Any]) -> dict[str, str]:
    env = app.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise _error(path, "app", "env", _APP_KEYS["env"], f"got {env!r}")
    return dict(env)


def _modules(path: Path, app: dict[str, Any]) -> list[str]:
    modules = app.get("tasks", [])
    if not isinstance(modules, list) or not all(
        isinstance(m, str) and m and all(part.isidentifier() for part in m.split("."))
        for m in modules
    ):
        raise _error(path, "app", "tasks", _APP_KEYS["tasks"], f"got {modules!r}")
    return list(modules)


def _locks(path: Path, app: dict[str, Any], root: Path) -> str | None:
    if "locks" not in app:
        return None
    spec = app["locks"]
    if not isinstance(spec, str) or not (
        spec == "memory"
        or (spec.startswith("file:") and len(spec) > len("file:"))
        or spec.startswith(("postgresql:", "postgresql+", "postgres:"))
    ):
        raise _error(path, "app", "locks", _APP_KEYS["locks"], f"got {spec!r}")
    if spec.startswith("file:"):
        return f"file:{root / spec.removeprefix('file:')}"  # an absolute DIR stays as it is
    return spec


def rpcctl_executable() -> str:
    """The rpcctl executable of this installation (beside the interpreter), else PATH's."""
    here = os.path.join(os.path.dirname(sys.executable), "rpcctl")
    if os.access(here, os.X_OK):
        return here
    import shutil  # here only: it is costly to import, and `ping --config` needs none of it

    return shutil.which("rpcctl") or "rpcctl"
