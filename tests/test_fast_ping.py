"""`rpcctl ping` without click (rpcctl/__main__.py) against the click command it stands in
for: every form the fast path serves means what it means to click, and every other form
goes to click."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_rpcctl
from rpcctl._settings import GLOBAL_OPTIONS, PING_OPTIONS, Settings
from rpcctl.cli import cli

# What the fast path leaves to click on purpose: a fleet, JSON output, help.
CLICK_ONLY = {"--nodes-file", "--discover", "--where", "--parallel", "--min-ok", "--json"}
CLICK_ONLY |= {"-h", "--help"}


def ping_command() -> click.Command:
    command = cli.get_command(click.Context(cli), "ping")
    assert command is not None
    return command


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[Settings, dict[str, Any]]]]:
    """Click's own `ping`, its body replaced by a recorder of the settings and options it
    would run with."""
    command = ping_command()
    seen: list[tuple[Settings, dict[str, Any]]] = []

    def record(**params: Any) -> None:
        settings = click.get_current_context().find_object(Settings)
        assert settings is not None
        seen.append((settings, params))

    body, command.callback = command.callback, record
    try:
        yield seen
    finally:
        command.callback = body


def through_click(argv: list[str]) -> tuple[Settings, dict[str, Any]] | None:
    """What click's `ping` would run with, or None when click runs no ping for *argv* (a
    usage error, help, another form)."""
    with recording() as seen:
        result = CliRunner().invoke(cli, argv)
    if result.exit_code != 0 or not seen:
        return None
    return seen[0]


def assert_agrees(argv: list[str]) -> None:
    from rpcctl.__main__ import parse, settings_from

    fast = parse(argv)
    clicked = through_click(argv)
    if fast is None:
        return  # click serves it, whatever it is
    assert clicked is not None, f"{argv}: the fast path serves what click refuses"
    click_settings, params = clicked
    assert not click_settings.is_fleet, argv
    assert vars(settings_from(fast)) == vars(click_settings), argv
    assert {o.dest: fast[o.dest] for o in PING_OPTIONS} == {
        o.dest: params[o.dest] for o in PING_OPTIONS
    }, argv


def test_every_option_of_clicks_ping_is_the_fast_paths_or_left_to_click() -> None:
    from rpcctl.__main__ import _GLOBAL, _PING

    command = ping_command()
    params = command.get_params(click.Context(command, parent=cli.make_context("rpcctl", ["ping"])))
    accepted = {flag for p in params for flag in (*p.opts, *p.secondary_opts)}
    assert accepted == set(_GLOBAL) | set(_PING) | CLICK_ONLY
    assert set(_GLOBAL) | set(_PING) <= {
        f for o in (*GLOBAL_OPTIONS, *PING_OPTIONS) for f in o.flags
    }
    group = {flag for p in cli.params for flag in p.opts} - {"--version", "--json"}
    assert group == {f for o in GLOBAL_OPTIONS for f in o.flags}
    # Each of ping's own options is the click option of the same definition (its default
    # and checks: the tests below).
    by_name = {p.name: p for p in params}
    for option in PING_OPTIONS:
        assert by_name[option.dest].opts == list(option.flags)


@pytest.mark.parametrize(
    ("args", "served"),
    [
        (["ping", "-n", "N"], {"nodes": "N", "wait": None, "ready": False, "timeout": 5.0}),
        (
            ["--config", "C", "ping", "--wait", "5", "--ready"],
            {"config_path": "C", "wait": 5.0, "ready": True, "timeout": 5.0},
        ),
        (
            ["ping", "--timeout=3", "--identity", "I", "--cookie-file", "F"],
            {
                "timeout": 3.0,
                "identity": "I",
                "cookie_file": "F",
                "wait": None,
                "ready": False,
            },
        ),
        (["ping", "--wait", "0"], {"wait": 0.0, "ready": False, "timeout": 5.0}),
        (["ping", "--wait", "inf"], {"wait": float("inf"), "ready": False, "timeout": 5.0}),
        (["ping", "--wait", "nan"], None),
        (["ping", "--timeout", "nan"], None),
        (["ping", "--timeout", "inf"], None),  # no socket takes it
        (["--timeout", "3", "ping", "-n", "N"], None),  # ping's own options come after it
        (["-n", "N", "ping", "-n", "M"], None),  # two nodes: a fleet, for click
        (["ping", "--discover", "dns:x:1"], None),
        (["ping", "--json", "-n", "N"], None),
        (["ping", "-n=N"], None),  # click reads the node "=N"
        (["ping", "-n"], None),
        (["ping", "stray"], None),
        (["ping", "--ready", "--ready"], None),
        (["ping", "--ready=1"], None),
        (["ping", "--timeout", "0"], None),  # click words the usage error
        (["ping", "--wait", "-1"], None),
        (["ping", "--wait", "soon"], None),
        (["ping", "--config", "/"], None),  # a directory: click's usage error
        (["tasks", "-n", "N"], None),
    ],
)
def test_the_fast_path_serves_one_nodes_ping(
    args: list[str], served: dict[str, Any] | None
) -> None:
    from rpcctl.__main__ import parse

    assert parse(args) == served
    assert_agrees(args)


SERVED = sorted({f for o in (*GLOBAL_OPTIONS, *PING_OPTIONS) for f in o.flags} - CLICK_ONLY)
GOOD = ["N", "unix:/x.sock", "ping", "0", "5", "2.5", "1e3", "inf"]
BAD = ["-1", "abc", "nan", "", "-x", "/", "--ready"]


@st.composite
def option_words(draw: st.DrawFn) -> list[str]:
    """One option as typed (`--flag VALUE`, `--flag=VALUE`, or the flag alone): mostly one
    the fast path serves, with a value it takes."""
    flag = draw(st.sampled_from(SERVED if draw(st.integers(0, 5)) else sorted(CLICK_ONLY)))
    value = draw(st.sampled_from(GOOD if draw(st.integers(0, 5)) else BAD))
    return draw(st.sampled_from([[flag, value], [f"{flag}={value}"], [flag]]))


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """Options, `ping`, options; now and then a stray word anywhere."""
    before = draw(st.lists(option_words(), max_size=2))
    after = draw(st.lists(option_words(), max_size=3))
    argv = [*(w for o in before for w in o), "ping", *(w for o in after for w in o)]
    if draw(st.integers(0, 4)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from([*BAD, "--"])))
    return argv


@settings(max_examples=500, deadline=None)
@given(command_lines())
def test_whatever_the_fast_path_serves_click_reads_the_same(argv: list[str]) -> None:
    assert_agrees(argv)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a number."),
        (["--timeout", "inf"], "Invalid value for '--timeout': 'inf' is not a finite number."),
        (["--wait", "nan"], "Invalid value for '--wait': 'nan' is not a number."),
        (["--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>0."),
        (["--timeout", "1e12"], "Invalid value for '--timeout': '1e12' is over a year."),
    ],
)
def test_a_bad_number_of_seconds_is_a_usage_error(
    short_tmp: Path, args: list[str], error: str
) -> None:
    """Not a traceback from the socket (NaN, infinity), nor a wait that never ends (NaN)."""
    result = run_rpcctl("ping", "-n", f"unix:{short_tmp}/none.sock", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"Error: {error}"
    assert result.stdout == ""


def test_a_directory_as_the_config_is_a_usage_error(short_tmp: Path) -> None:
    """Once a traceback of the fast path (IsADirectoryError): now click's usage error."""
    result = run_rpcctl("ping", "--config", str(short_tmp))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--config': File '{short_tmp}' is a directory."
    )
