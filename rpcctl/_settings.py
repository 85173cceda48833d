"""What every command needs before it talks to an agent: the node and the credentials.

Kept free of click so that the ``ping`` fast path (``rpcctl.__main__``) can use it too.
"""

from __future__ import annotations

import os

from app_agent import wire
from app_agent.wire import NODE_ENV, Address
from app_agent.wire.cookies import COOKIE_ENV, COOKIE_FILE_ENV
from rpcctl import client as client_mod
from rpcctl._transport import Security
from rpcctl.exceptions import (
    AuthenticationFailed,
    Busy,
    ConfigError,
    NotReady,
    RpcctlError,
    Unreachable,
)

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from rpcctl.release.config import Config

PROG_ENV = wire.environment.PROG
IDENTITY_ENV = wire.environment.IDENTITY


class GlobalOption:
    """One of the options every command takes, before or after its name: its flags, the
    Settings attribute it fills, and its help. Declared here, without click, so that the
    click group and the ``ping`` fast path (``rpcctl.__main__``) read the same table."""

    __slots__ = ("dest", "flags", "help", "metavar", "multiple", "path")

    def __init__(
        self,
        flags: tuple[str, ...],
        dest: str,
        metavar: str,
        help: str,
        multiple: bool = False,
        path: bool = False,
    ) -> None:
        self.flags = flags
        self.dest = dest
        self.metavar = metavar
        self.help = help
        self.multiple = multiple  # repeatable: each value adds one
        self.path = path  # a file (click checks it is not a directory)


GLOBAL_OPTIONS = (
    GlobalOption(
        ("--node", "-n"),
        "nodes",
        "NODE",
        "Agent address: unix:PATH, tcp://HOST:PORT or tls://HOST:PORT; repeat for a fleet. "
        "Default: --config's node, else $RPCCTL_NODE, else rpcctl.toml found upward.",
        multiple=True,
    ),
    GlobalOption(
        ("--nodes-file",),
        "nodes_file",
        "FILE",
        "A fleet: one address a line, # comments (ping, rpc, info, tasks, stack, stats, "
        "health, profile, mem, log-level).",
    ),
    GlobalOption(
        ("--discover",),
        "discover",
        "dns:NAME:PORT",
        "A fleet: every A/AAAA record of NAME (a Kubernetes headless service).",
    ),
    GlobalOption(
        ("--config",),
        "config_path",
        "FILE",
        "The release config (rpcctl.toml or pyproject.toml). Default: found upward from here.",
        path=True,
    ),
    GlobalOption(
        ("--cookie-file",),
        "cookie_file",
        "FILE",
        "Owner-only file holding the cookie. Default: --config's cookie_file, else "
        "$RPCCTL_COOKIE, else $RPCCTL_COOKIE_FILE, else the cookie_file of the rpcctl.toml "
        "found upward. Never pass the cookie itself on the command line.",
        path=True,
    ),
    GlobalOption(
        ("--identity",),
        "identity",
        "NAME",
        "Who we are to an agent with an access file; the cookie (from the cookie options) is "
        "that identity's. Default: --config's identity, else $RPCCTL_IDENTITY, else the "
        "identity of the rpcctl.toml found upward.",
    ),
    GlobalOption(("--tls-ca",), "tls_ca", "FILE", "CA certificate(s) to verify a tls:// agent."),
    GlobalOption(("--tls-cert",), "tls_cert", "FILE", "Client certificate for mutual TLS."),
    GlobalOption(("--tls-key",), "tls_key", "FILE", "Key of the client certificate."),
)
"""The options of the ``rpcctl`` group, also accepted after the command's name (``--json``
too, which each command declares itself)."""


def parse_node(text: str, base_dir: str | None = None) -> Address:
    """An Address from *text*; ConfigError (exit 2) naming every accepted form."""
    try:
        return wire.parse_node(text, base_dir=base_dir)
    except wire.AddressError as exc:
        raise ConfigError(str(exc)) from None


class Settings:
    """What the group's options hand to every command."""

    def __init__(self) -> None:
        self.node: str | None = None
        self.nodes: list[str] = []  # more than one: the fleet commands fan out
        self.nodes_file: str | None = None
        self.discover: str | None = None
        self.config_path: str | None = None
        self.cookie_file: str | None = None
        self.identity: str | None = None  # --identity
        self.where: list[str] = []  # --where KEY=VALUE, for fleets
        self.tls: dict[str, str | None] = {}
        self.json = False
        self.cookie_source = ""  # where the cookie was read from, for messages
        self.hint_lock_wait = False  # a busy lock: suggest --lock-wait (rpc without it)
        self._node_config: Config | None = None  # the config that gave the node
        self._config: Config | None = None
        self._security: Security | None = None

    def apply(self, dest: str, value: str | tuple[str, ...] | list[str] | None) -> None:
        """A global option's value (see GLOBAL_OPTIONS); not given (None, empty) keeps what
        is set. Nodes add up, wherever they were given: ``-n A ping -n B`` is a fleet."""
        if not value:
            return
        if dest == "nodes":
            self.nodes = [*self.nodes, *value]
            self.node = self.nodes[0]
        elif dest.startswith("tls_"):
            self.tls[dest[len("tls_") :]] = str(value)
        else:
            setattr(self, dest, value)

    # -- credentials ---------------------------------------------------------------------

    def security(self) -> Security:
        """The cookie and TLS settings, read once per command.

        The cookie comes from the first of: --cookie-file; the cookie_file of --config (an
        explicit file beats the environment, as its node does); RPCCTL_COOKIE;
        RPCCTL_COOKIE_FILE; the cookie_file of the config found upward that gave the node.
        TLS files come from the options or RPCCTL_TLS_*.
        """
        if self._security is None:
            self._security = self._resolve_security()
        return self._security

    def _resolve_security(self) -> Security:
        identity = self._identity()
        cookie_file: str | Path | None = None
        if self.cookie_file is not None:
            cookie_file, source = self.cookie_file, f"--cookie-file {self.cookie_file}"
        elif self.config_path and self.config().cookie_file is not None:
            cookie_file = self.config().cookie_file
            source = f"cookie_file {cookie_file} in {self.config().path}"
        elif os.environ.get(COOKIE_ENV) is not None:
            source = f"${COOKIE_ENV}"
        elif os.environ.get(COOKIE_FILE_ENV):
            source = f"${COOKIE_FILE_ENV} ({os.environ[COOKIE_FILE_ENV]})"
        elif self._node_config is not None and self._node_config.cookie_file is not None:
            cookie_file = self._node_config.cookie_file
            source = f"cookie_file {cookie_file} in {self._node_config.path}"
        else:
            source = ""
        security = Security.resolve(
            cookie_file=cookie_file,
            tls_ca=self.tls.get("ca"),
            tls_cert=self.tls.get("cert"),
            tls_key=self.tls.get("key"),
            identity=identity,
        )
        self.cookie_source = source if security.cookie is not None else ""
        return security

    def _identity(self) -> str | None:
        """The identity, in the cookie's order: --identity; the identity of --config;
        RPCCTL_IDENTITY; the identity of the config found upward that gave the node."""
        if self.identity:
            return self.identity
        if self.config_path and self.config().identity is not None:
            return self.config().identity
        if os.environ.get(IDENTITY_ENV):
            return os.environ[IDENTITY_ENV]
        if self._node_config is not None:
            return self._node_config.identity
        return None

    # -- nodes ---------------------------------------------------------------------------

    @property
    def is_fleet(self) -> bool:
        """Several nodes, or a --where filter (which makes even one node a fleet of one)."""
        return len(self.nodes) > 1 or bool(self.nodes_file or self.discover or self.where)

    def fleet(self) -> list[str]:
        """Every node of -n, --nodes-file and --discover; a usage error when there is none."""
        from rpcctl._nodes import resolve_nodes

        nodes = resolve_nodes(self.nodes, self.nodes_file, self.discover)
        if not nodes and self.where and not (self.nodes_file or self.discover):
            nodes = [str(self.address())]  # --where on the one node found as usual
        if not nodes:
            msg = "no nodes: the nodes file is empty or discovery found no address"
            raise ConfigError(msg)
        return nodes

    def single(self, command: str) -> None:
        """Refuse several nodes for a command that acts on one app."""
        if self.is_fleet:
            msg = f"`{command}` acts on one node; give one --node (fleets: ping, rpc, info, tasks)"
            raise ConfigError(msg)

    def connect(self, timeout: float = client_mod.DEFAULT_TIMEOUT) -> client_mod.Client:
        address = self.address()
        return client_mod.Client(address, timeout, self.security())

    def address(self) -> Address:
        """The node: --node, then --config, then RPCCTL_NODE, then rpcctl.toml found upward."""
        if self.node:
            return parse_node(self.node)
        if self.config_path:
            return self._from_config(self.config())
        if os.environ.get(NODE_ENV):
            return parse_node(os.environ[NODE_ENV])
        from rpcctl.release import config

        found = config.find()
        if found is None:
            msg = (
                f"no node given: pass --node, set {NODE_ENV}, or run inside a directory "
                f"with {config.CONFIG_NAME} (or [tool.rpcctl] in pyproject.toml)"
            )
            raise ConfigError(msg)
        return self._from_config(config.load(found))

    def _from_config(self, loaded: Config) -> Address:
        self._node_config = loaded
        return loaded.address

    def config(self) -> Config:
        """The release config: --config, else the nearest one found upward (read once)."""
        if self._config is not None:
            return self._config
        from pathlib import Path

        from rpcctl.release import config

        if self.config_path:
            self._config = config.load(Path(self.config_path))
            return self._config
        found = config.find()
        if found is None:
            msg = (
                f"no {config.CONFIG_NAME} (or pyproject.toml with [tool.rpcctl]) here or above; "
                "pass --config FILE or create one with `rpcctl release init NAME`"
            )
            raise ConfigError(msg)
        self._config = config.load(found)
        return self._config

    # -- what the user reads -------------------------------------------------------------

    @property
    def prog(self) -> str:
        """The command the user typed: ``bin/NAME`` through a launcher, else ``rpcctl``."""
        return os.environ.get(PROG_ENV) or "rpcctl"

    def explain(self, exc: RpcctlError) -> str:
        """*exc*'s message for this user: hints name the command they typed, an app that is
        not running gets the command that starts it, a refused cookie says where it came from,
        a busy lock how to wait for it.
        """
        message = exc.message
        prog = self.prog
        if prog != "rpcctl":
            message = message.replace("`rpcctl ", f"`{prog} ")
        if (
            isinstance(exc, Unreachable)
            and not isinstance(exc, NotReady)
            and "no agent is running" in message
            and self._node_config is not None
        ):
            start = prog  # a launcher passes its --config itself; plain rpcctl needs it
            if self.config_path and prog == "rpcctl":
                import shlex

                start += f" --config {shlex.quote(self.config_path)}"
            message += f"; start it with `{start} start`"
        if isinstance(exc, AuthenticationFailed) and "cookie" in message and self.cookie_source:
            message += f" (our cookie was read from {self.cookie_source})"
        if isinstance(exc, Busy) and self.hint_lock_wait:
            message += "; to wait for it instead, add --lock-wait SECONDS"
        return message
