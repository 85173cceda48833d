"""What every command needs before it talks to an agent: the node and the credentials.

Kept free of click so that the ``ping`` fast path (``rpcctl.__main__``) can use it too.
"""

from __future__ import annotations

import os

from app_agent.wire import NODE_ENV, Address
from app_agent.wire.cookies import COOKIE_ENV, COOKIE_FILE_ENV
from rpcctl import client as client_mod
from rpcctl._transport import Security
from rpcctl.exceptions import ConfigError

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from rpcctl.config import Config


class Settings:
    """What the group's options hand to every command."""

    def __init__(self) -> None:
        self.node: str | None = None
        self.nodes: list[str] = []  # more than one: the fleet commands fan out
        self.nodes_file: str | None = None
        self.discover: str | None = None
        self.config_path: str | None = None
        self.cookie_file: str | None = None
        self.tls: dict[str, str | None] = {}
        self.json = False
        self._config_cookie: Path | None = None
        self._security: Security | None = None

    def security(self) -> Security:
        """--cookie-file, else RPCCTL_COOKIE(_FILE), else the cookie_file of the config that
        gave the node; TLS files from the options or RPCCTL_TLS_*. Read once per command."""
        if self._security is None:
            self._security = self._resolve_security()
        return self._security

    def _resolve_security(self) -> Security:
        cookie_file: str | Path | None = self.cookie_file
        if cookie_file is None and not (
            os.environ.get(COOKIE_ENV) or os.environ.get(COOKIE_FILE_ENV)
        ):
            cookie_file = self._config_cookie
        return Security.resolve(
            cookie_file=cookie_file,
            tls_ca=self.tls.get("ca"),
            tls_cert=self.tls.get("cert"),
            tls_key=self.tls.get("key"),
        )

    @property
    def is_fleet(self) -> bool:
        return len(self.nodes) > 1 or bool(self.nodes_file or self.discover)

    def fleet(self) -> list[str]:
        """Every node of -n, --nodes-file and --discover; a usage error when there is none."""
        from rpcctl import fleet

        nodes = fleet.resolve_nodes(self.nodes, self.nodes_file, self.discover)
        if not nodes:
            msg = "no nodes: the nodes file is empty or discovery found no address"
            raise ConfigError(msg)
        return nodes

    def single(self, command: str) -> None:
        """Refuse several nodes for a command that acts on one app."""
        if self.is_fleet:
            msg = f"`{command}` acts on one node; give one --node (fleets: ping, rpc, info, tasks)"
            raise ConfigError(msg)

    def connect(self) -> client_mod.Client:
        address = self.address()
        return client_mod.Client(address, client_mod.DEFAULT_TIMEOUT, self.security())

    def address(self) -> Address:
        """The node: --node, then --config, then RPCCTL_NODE, then rpcctl.toml found upward."""
        if self.node:
            return client_mod.resolve_address(self.node)
        if self.config_path:
            return self._from_config(self.config())
        if os.environ.get(NODE_ENV):
            return client_mod.resolve_address(None)
        from rpcctl import config

        found = config.find()
        if found is None:
            msg = (
                f"no node given: pass --node, set {NODE_ENV}, or run inside a directory "
                f"with {config.CONFIG_NAME} (or [tool.rpcctl] in pyproject.toml)"
            )
            raise ConfigError(msg)
        return self._from_config(config.load(found))

    def _from_config(self, loaded: Config) -> Address:
        self._config_cookie = loaded.cookie_file
        return loaded.address

    def config(self) -> Config:
        """The release config: --config, else the nearest one found upward."""
        from pathlib import Path

        from rpcctl import config

        if self.config_path:
            return config.load(Path(self.config_path))
        found = config.find()
        if found is None:
            msg = (
                f"no {config.CONFIG_NAME} (or pyproject.toml with [tool.rpcctl]) here or above; "
                "pass --config FILE or create one with `rpcctl release init NAME`"
            )
            raise ConfigError(msg)
        return config.load(found)
