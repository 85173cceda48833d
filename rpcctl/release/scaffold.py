"""``rpcctl release init NAME``: the release layout for an app."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from rpcctl.exceptions import UsageError
from rpcctl.release.config import HOOK_EVENTS, rpcctl_executable

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

CONFIG_TEMPLATE = """\
# The release of {name}: `bin/{name} start` runs it with these settings and hooks.
# Relative paths are relative to this file. Reference: rpcctl's docs/release.md.

[app]
name = "{name}"
# "python" here is the interpreter rpcctl is installed in (its venv), whatever PATH says.
command = ["python", "-m", "{module}"]
node = "unix:run/{name}.sock"
# cwd = "."
# env = {{ LOG_LEVEL = "info" }}
# cookie_file = "cookie"  # required for tcp:// nodes: `rpcctl cookie generate cookie`
# tasks = ["{module}.tasks"]  # modules `bin/{name} eval` imports to find tasks by alias
# python = "python"       # the interpreter of `bin/{name} eval` (default: rpcctl's own)
# locks = "file:run/locks"  # task locks shared by the app and `bin/{name} eval`
# ready_timeout = 30      # seconds for the agent to answer ping after the app starts
# stop_timeout = 10       # seconds between SIGTERM and SIGKILL

[hooks]
pre_start = "rel/hooks/pre_start"
post_start = "rel/hooks/post_start"   # runs once the agent answers ping
pre_stop = "rel/hooks/pre_stop"       # the app is still up: hooks can rpc it
post_stop = "rel/hooks/post_stop"
# timeout = 300                        # seconds per hook script

# [hooks.on_failure]                   # "stop" or "continue"
# pre_start = "stop"                   # the app does not start
# post_start = "stop"                  # the app is stopped, start exits non-zero
# pre_stop = "continue"
# post_stop = "continue"
"""

LAUNCHER_TEMPLATE = """\
#!/bin/sh
# Launcher for the {name} release: `bin/{name} ping`, `bin/{name} rpc EXPR`, `bin/{name} start`...
# It finds its release root (following symlinks) and runs rpcctl with that root's config,
# so it works from any directory.
set -eu
self=$0
while [ -h "$self" ]; do
    link=$(readlink "$self")
    case $link in
        /*) self=$link ;;
        *) self=$(dirname "$self")/$link ;;
    esac
done
root=$(cd "$(dirname "$self")/.." && pwd -P)
# RPCCTL_BIN overrides; else the rpcctl that made this launcher, else rpcctl on PATH.
rpcctl=${{RPCCTL_BIN:-}}
made_by={made_by}
if [ -z "$rpcctl" ]; then
    if [ -n "$made_by" ] && [ -x "$made_by" ]; then rpcctl=$made_by; else rpcctl=rpcctl; fi
fi
export RPCCTL_PROG="$0"  # what hints and errors call this command
exec "$rpcctl" --config "$root/rpcctl.toml" "$@"
"""

MIGRATE_TEMPLATE = """\
#!/bin/sh
# post_start: runs after {name}'s agent answers ping. Applies the database migrations
# inside the running app. A non-zero exit stops the app (the post_start policy is "stop"),
# so a release whose migrations fail never serves traffic.
set -eu
# The runner has already seen a ping; this also makes the script safe to run by hand.
"$RPCCTL" ping --wait 30 >/dev/null
echo "migrating {name} (pid ${{RPCCTL_APP_PID:-?}})"
# --lock-wait: with a lock backend shared by replicas, every replica can run this hook;
# one migrates, the others wait for it and then find nothing left to do.
"$RPCCTL" rpc --lock-wait 300 {module}.tasks.migrate
"""


def init(
    name: str,
    directory: Path,
    force: bool = False,
    module: str | None = None,
    launcher_rpcctl: str | None = None,
) -> list[Path]:
    """Write the release files into *directory*; the paths written, in order.

    *launcher_rpcctl* is the rpcctl the launcher prefers (default: this installation's;
    an empty string means rpcctl from PATH).
    """
    if not _NAME.match(name):
        msg = f"bad release name {name!r}: use letters, digits, '_', '-' and '.'"
        raise UsageError(msg)
    module = module or name.replace("-", "_")
    made_by = shlex.quote(rpcctl_executable() if launcher_rpcctl is None else launcher_rpcctl)
    files: dict[Path, tuple[str, int]] = {
        directory / "rpcctl.toml": (CONFIG_TEMPLATE.format(name=name, module=module), 0o644),
        directory / "bin" / name: (
            LAUNCHER_TEMPLATE.format(name=name, made_by=made_by),
            0o755,
        ),
        directory / "rel" / "hooks" / "post_start" / "10-migrate.sh": (
            MIGRATE_TEMPLATE.format(name=name, module=module),
            0o755,
        ),
    }
    existing = [p for p in files if p.exists()]
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        msg = f"refusing to overwrite {listed} (use --force)"
        raise UsageError(msg)
    for event in HOOK_EVENTS:
        (directory / "rel" / "hooks" / event).mkdir(parents=True, exist_ok=True)
    written = []
    for path, (text, mode) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        written.append(path)
    return written
