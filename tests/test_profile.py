"""rpcctl profile: the sampling profiler inside the live app, through real agents."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from introspect_support import detach, last_line, ok, stop_job, wait_for_worker

import rpcctl
from conftest import (
    AppProcess,
    rpcctl_executable,
    run_rpcctl,
    wait_until,
)

# -- profile -------------------------------------------------------------------------------------


COLLAPSED_LINE = re.compile(r"^(\S[^;]*(?:;[^;]+)*) (\d+)$")


def test_profile_names_the_hot_function(app: AppProcess, short_tmp: Path) -> None:
    job = detach(app, "introapp.spin(120)")
    try:
        wait_for_worker(app, job)
        collapsed = app.rpcctl("profile", "--seconds", "1")
        svg_file = short_tmp / "profile.svg"
        svg = app.rpcctl("profile", "--seconds", "0.5", "--format", "svg", "--out", str(svg_file))
        scope_file = short_tmp / "profile.json"
        scope = app.rpcctl(
            "profile", "--seconds", "0.5", "--format", "speedscope", "--out", str(scope_file)
        )
    finally:
        stop_job(app, job)
    ok(collapsed)
    lines = collapsed.stdout.splitlines()
    assert lines
    assert all(COLLAPSED_LINE.match(line) for line in lines), lines[:3]
    hot = [line for line in lines if "hot_loop (introapp.py:" in line]
    assert hot, lines[:5]
    frames = hot[0].rsplit(" ", 1)[0].split(";")
    assert frames[0].startswith("rpcctl-worker-")  # rooted at the thread
    assert frames.index(next(f for f in frames if f.startswith("spin ("))) < frames.index(
        next(f for f in frames if f.startswith("hot_loop ("))
    )
    assert re.search(r"^rpcctl: \d+ samples at 100 Hz over ", collapsed.stderr, re.M)

    ok(svg)
    assert svg.stdout == ""
    root = ET.parse(svg_file).getroot()  # noqa: S314  (our own output)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    titles = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("hot_loop (introapp.py:") for t in titles)
    assert f"wrote {svg_file}" in svg.stderr

    ok(scope)
    document = json.loads(scope_file.read_text())
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = [f["name"] for f in document["shared"]["frames"]]
    assert "hot_loop" in names
    for profile in document["profiles"]:
        assert profile["type"] == "sampled"
        assert len(profile["samples"]) == len(profile["weights"])
        assert all(0 <= i < len(names) for s in profile["samples"] for i in s)


def test_one_profile_at_a_time(fresh_app: AppProcess) -> None:
    first = subprocess.Popen(
        [rpcctl_executable(), "-n", fresh_app.node, "profile", "--seconds", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with rpcctl.connect(fresh_app.node) as conn:
            wait_until(
                lambda: any(t["name"] == "rpcctl-profiler" for t in conn.stack()["threads"]),
                what="the first profile to start",
            )
        second = fresh_app.rpcctl("profile", "--seconds", "1")
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 7
    assert re.fullmatch(
        r"rpcctl: error: a profile is already running \(profile-\d+, asked by uid=\d+ pid=\d+ "
        r"\d+s ago, \d+s left\); one at a time: `rpcctl cancel profile-\d+` ends it",
        last_line(second),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "0"], "Invalid value for '--seconds'"),
        (["--seconds", "1", "--rate", "5000"], "Invalid value for '--rate'"),
        (["--seconds", "1", "--format", "png"], "Invalid value for '--format'"),
        ([], "Missing option '--seconds'"),
    ],
)
def test_profile_bad_options_exit_2(short_tmp: Path, args: list[str], message: str) -> None:
    result = run_rpcctl("-n", f"unix:{short_tmp}/none.sock", "profile", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_profile_refuses_an_unwritable_out_before_it_starts(short_tmp: Path) -> None:
    # The node does not exist: exit 2 (not 3) shows the file was checked first.
    result = run_rpcctl(
        "-n", f"unix:{short_tmp}/none.sock", "profile", "--seconds", "5", "--out", "/nonexistent/p"
    )
    assert (result.returncode, result.stderr) == (
        2,
        "rpcctl: error: cannot write /nonexistent/p: no directory /nonexistent\n",
    )
