"""What every command needs before it talks to an agent: the node and the credentials.

Kept free of click so that the ``ping`` fast path (``rpcctl.__main__``) can use it too.
"""

from __future__ import annotations

import math
import os

from app_agent import wire
from app_agent.wire import NODE_ENV, Address
from app_agent.wire.cookies import COOKIE_ENV, COOKIE_FILE_ENV
from rpcctl import client as client_mod
from rpcctl._nodes import parse_node, resolve_nodes
from rpcctl._transport import Security
from rpcctl.exceptions import (
    ConfigError,
    RpcctlError,
)

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from rpcctl.release.config import Config

PROG_ENV = wire.environment.PROG
IDENTITY_ENV = wire.environment.IDENTITY


TEXT = "text"
FILE = "file"  # a file's path (click checks it is not a directory)
FLAG = "flag"  # takes no value: given is True
SECONDS = "seconds"  # a number >= 0
POSITIVE_SECONDS = "positive seconds"  # a number > 0


class Option:
    """One command-line option: its flags, the name its value goes by, its kind and default,
    and its help. Declared here, without click, so that the click commands and the ``ping``
    fast path (``rpcctl.__main__``) are built from the same definitions."""

    __slots__ = (
        "default",
        "dest",
        "endless",
        "flags",
        "help",
        "kind",
        "maximum",
        "metavar",
        "multiple",
    )

    def __init__(
        self,
        flags: tuple[str, ...],
        dest: str,
        metavar: str,
        help: str,
        kind: str = TEXT,
        default: float | None = None,
        multiple: bool = False,
        endless: bool = False,
        maximum: float | None = None,
    ) -> None:
        self.flags = flags
        self.dest = dest
        self.metavar = metavar
        self.help = help
        self.kind = kind
        self.default = default
        self.multiple = multiple  # repeatable: each value adds one
        self.endless = endless  # seconds: "inf" is taken (no end), else refused
        self.maximum = maximum  # seconds: the most the option takes (click's range)

    def convert(self, text: str) -> str | float:
        """The value *text* gives this option (one that takes a value), checked as click
        checks it: ValueError where click would refuse it."""
        if self.kind == FILE and os.path.isdir(text):
            raise ValueError(text)  # click.Path(dir_okay=False)
        if self.kind in (TEXT, FILE):
            return text
        number = float(text)  # what click's FloatRange does first
        if number < 0 or (number == 0 and self.kind == POSITIVE_SECONDS):
            raise ValueError(text)
        problem = self.problem(number)
        if problem is not None:
            raise ValueError(problem)
        return number

    def problem(self, seconds: float) -> str | None:
        """What is wrong with *seconds* beyond click's range check: NaN, which no wait or
        socket timeout takes, and infinity unless the option is endless."""
        if math.isnan(seconds):
            return "is not a number"
        if math.isinf(seconds):
            return None if self.endless else "is not a finite number"
        if seconds > MAX_SECONDS:
            # Socket timeouts overflow past ~292 years; a year is already no deadline.
            return "is over a year" + ("; inf waits without end" if self.endless else "")
        return None


MAX_SECONDS = 365 * 24 * 3600.0
"""The longest finite seconds option (a year)."""

GLOBAL_OPTIONS = (
    Option(
        ("--node", "-n"),
        "nodes",
        "NODE",
        "Agent address: unix:PATH, tcp://HOST:PORT or tls://HOST:PORT; repeat for a fleet. "
        "Default: --config's node, else $RPCCTL_NODE, else rpcctl.toml found upward.",
        multiple=True,
    ),
    Option(
        ("--nodes-file",),
        "nodes_file",
        "FILE",
        "A fleet: one address a line, # comments (ping, rpc, info, tasks, history, drain, "
        "resume, stack, stats, health, profile, mem, log-level, top).",
    ),
    Option(
        ("--discover",),
        "discover",
        "dns:NAME:PORT",
        "A fleet: every A/AAAA record of NAME (a Kubernetes headless service).",
    ),
    Option(
        ("--config",),
        "config_path",
        "FILE",
        "The release config (rpcctl.toml or pyproject.toml). Default: found upward from here.",
        kind=FILE,
    ),
    Option(
        ("--cookie-file",),
        "cookie_file",
        "FILE",
        "Owner-only file holding the cookie. Default: --config's cookie_file, else "
        "$RPCCTL_COOKIE, else $RPCCTL_COOKIE_FILE, else the cookie_file of the rpcctl.toml "
        "found upward. Never pass the cookie itself on the command line.",
        # Not FILE: the cookie reader refuses a directory (or a FIFO...) and says why.
    ),
    Option(
        ("--identity",),
        "identity",
        "NAME",
        "Who we are to an agent with an access file; the cookie (from the cookie options) is "
        "that identity's. Default: --config's identity, else $RPCCTL_IDENTITY, else the "
        "identity of the rpcctl.toml found upward.",
    ),
    Option(("--tls-ca",), "tls_ca", "FILE", "CA certificate(s) to verify a tls:// agent."),
    Option(("--tls-cert",), "tls_cert", "FILE", "Client certificate for mutual TLS."),
    Option(("--tls-key",), "tls_key", "FILE", "Key of the client certificate."),
)
"""The options of the ``rpcctl`` group, also accepted after the command's name (``--json``
too, which each command declares itself)."""

PING_OPTIONS = (
    Option(
        ("--wait",),
        "wait",
        "SECONDS",
        "Keep trying (with backoff) until the agent answers or SECONDS pass "
        "(fleets: every node, in parallel, within the same SECONDS).",
        kind=SECONDS,
        endless=True,
    ),
    Option(
        ("--ready",),
        "ready",
        "",
        "Also require the app to be ready (app_agent.set_ready); exit 3 while it is not.",
        kind=FLAG,
    ),
    Option(
        ("--timeout",),
        "timeout",
        "SECONDS",
        "Seconds to wait for one answer (per node).",
        kind=POSITIVE_SECONDS,
        default=client_mod.DEFAULT_TIMEOUT,
    ),
)
"""``ping``'s own options (its fleet options and ``--json`` are the click command's: a
fleet's ping, or ping with ``--json``, always goes through click)."""


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
        """*exc*'s message for this user, with the hint its reason calls for
        (:mod:`rpcctl._explain`): the command they typed, the command that starts an app that
        is not running, where a refused cookie came from, how to wait for a busy lock."""
        from rpcctl._explain import explain

        return explain(
            exc,
            prog=self.prog,
            start=self._start_command(),
            cookie_source=self.cookie_source,
            lock_wait=self.hint_lock_wait,
        )

    def _start_command(self) -> str | None:
        """What starts the app whose config gave the node; None without one."""
        if self._node_config is None:
            return None
        start = self.prog  # a launcher passes its --config itself; plain rpcctl needs it
        if self.config_path and start == "rpcctl":
            import shlex

            start += f" --config {shlex.quote(self.config_path)}"
        return start
