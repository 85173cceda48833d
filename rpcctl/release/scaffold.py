"""``rpcctl release init NAME``: the release layout for an app."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from app_agent.wire import environment
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

# In the shell templates, {BIN}, {PROG}, {RPCCTL} and {APP_PID} are variables' names (_ENV).
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
# {BIN} overrides; else the rpcctl that made this launcher, else rpcctl on PATH.
rpcctl=${{{BIN}:-}}
made_by={made_by}
if [ -z "$rpcctl" ]; then
    if [ -n "$made_by" ] && [ -x "$made_by" ]; then rpcctl=$made_by; else rpcctl=rpcctl; fi
fi
export {PROG}="$0"  # what hints and errors call this command
exec "$rpcctl" --config "$root/rpcctl.toml" "$@"
"""

MIGRATE_TEMPLATE = """\
#!/bin/sh
# post_start: runs after {name}'s agent answers ping. Applies the database migrations
# inside the running app. A non-zero exit stops the app (the post_start policy is "stop"),
# so a release whose migrations fail never serves traffic.
set -eu
# The runner has already seen a ping; this also makes the script safe to run by hand.
"${RPCCTL}" ping --wait 30 >/dev/null
echo "migrating {name} (pid ${{{APP_PID}:-?}})"
# --lock-wait: with a lock backend shared by replicas, every replica can run this hook;
# one migrates, the others wait for it and then find nothing left to do.
"${RPCCTL}" rpc --lock-wait 300 {task}
"""

_ENV = {
    "BIN": environment.BIN,
    "PROG": environment.PROG,
    "RPCCTL": environment.RPCCTL,
    "APP_PID": environment.APP_PID,
}
"""The variables the launcher and the hook read and set, by their one name."""

DJANGO_COMMAND = '["python", "-m", "gunicorn", "--preload", "{module}.wsgi"]'
"""A Django site's command: gunicorn loads the site (and so the agent) once, in its arbiter,
before it forks the workers (docs/django.md)."""

_DJANGO_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE["']\s*,\s*["']([A-Za-z_][\w.]*)["']""")


def django_settings(directory: Path) -> str | None:
    """The settings module a Django project's ``manage.py`` in *directory* names
    (``mysite.settings``); None when there is no Django project there."""
    try:
        text = (directory / "manage.py").read_text(errors="replace")
    except OSError:
        return None
    found = _DJANGO_SETTINGS.search(text)
    return found.group(1) if found else None


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
    settings = django_settings(directory)
    module = _module(name, module, settings)
    made_by = shlex.quote(rpcctl_executable() if launcher_rpcctl is None else launcher_rpcctl)
    config = CONFIG_TEMPLATE.format(name=name, module=module)
    if settings is not None:
        python_m = f'["python", "-m", "{module}"]'
        config = config.replace(python_m, DJANGO_COMMAND.format(module=module), 1)
    files: dict[Path, tuple[str, int]] = {
        directory / "rpcctl.toml": (config, 0o644),
        directory / "bin" / name: (
            LAUNCHER_TEMPLATE.format(name=name, made_by=made_by, **_ENV),
            0o755,
        ),
        directory / "rel" / "hooks" / "post_start" / "10-migrate.sh": (
            MIGRATE_TEMPLATE.format(name=name, task=_migrate_task(module, settings), **_ENV),
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


def next_steps(name: str, directory: Path, module: str | None = None) -> list[str]:
    """What to do after ``release init``, in order: the file to edit, then the commands to
    try; for a Django project (a ``manage.py`` naming its settings), Django's way."""
    settings = django_settings(directory)
    module = _module(name, module, settings)
    launcher = f"bin/{name}"
    if settings is not None:
        where = settings.replace(".", "/") + ".py"
        first = [
            f'Add "app_agent.contrib.django" to INSTALLED_APPS in {where}: the site\'s agent '
            "then starts under gunicorn, and the post_start hook runs django.migrate in it.",
            f"Check [app] command in rpcctl.toml: it serves {module}.wsgi with gunicorn "
            "--preload (pip install gunicorn).",
        ]
        task = "django.showmigrations"
    else:
        tasks = f"{module.replace('.', '/')}/tasks.py"
        first = [
            f"Write your release tasks in {tasks}, each marked @task (from app_agent import "
            f"task): the post_start hook (rel/hooks/post_start/10-migrate.sh) calls "
            f"{module}.tasks.migrate.",
            f"Start the agent in your app's entry point (python -m {module}) with "
            f'app_agent.start(tasks=["{module}.tasks"]) and no node: {launcher} start gives '
            f"it {environment.NODE}. On SIGTERM, stop serving and call agent.stop().",
        ]
        task = f"{module}.tasks.migrate"
    return [
        *first,
        f"{launcher} start    (in the foreground: the app, then the post_start hook)",
        f"{launcher} ping     (from another terminal)",
        f"{launcher} rpc {task}",
    ]


def _module(name: str, given: str | None, settings: str | None) -> str:
    """The app's package: --module, else a Django project's (its settings' package), else
    NAME."""
    if given:
        return given
    if settings is not None and "." in settings:
        return settings.rpartition(".")[0]
    return name.replace("-", "_")


def _migrate_task(module: str, settings: str | None) -> str:
    return "django.migrate" if settings is not None else f"{module}.tasks.migrate"
