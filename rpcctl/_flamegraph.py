"""Profiles as files people open: collapsed stacks, speedscope JSON and SVG flame graphs.

The agent sends a profile as plain data (a frame table and counted stacks, outermost frame
first; see app_agent/_introspection/profile.py). Collapsed stacks are flamegraph.pl's
input format, one ``thread;outer;...;inner COUNT`` line per stack. Speedscope (https://www.speedscope.app)
reads its own JSON. The SVG is drawn here, self-contained (no script, no external
resources): every frame a box as wide as its share of the samples, with a tooltip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any
from xml.sax.saxutils import escape

from app_agent import __version__
from app_agent.wire.words import plural

Stacks = list[tuple[tuple[str, ...], int]]
"""(frames from the root to the innermost, samples)."""


def label(frame: dict[str, Any]) -> str:
    """``function (file:line)``: the frame's name in collapsed stacks and flame graphs."""
    text = f"{frame['name']} ({frame.get('short') or frame['file']}:{frame['line']})"
    return text.replace(";", ",")  # the separator of collapsed stacks


def stacks(profile: dict[str, Any], prefix: Sequence[str] = ()) -> Stacks:
    """The profile's stacks as labels, each rooted at its thread (and *prefix*, e.g. the
    node of a fleet)."""
    labels = [label(f) for f in profile["frames"]]
    return [
        (
            (*prefix, str(s["thread"]).replace(";", ","), *(labels[i] for i in s["frames"])),
            int(s["count"]),
        )
        for s in profile["stacks"]
    ]


def collapsed(all_stacks: Stacks) -> str:
    """flamegraph.pl's input: ``a;b;c COUNT`` lines, the most frequent first."""
    merged: dict[tuple[str, ...], int] = {}
    for path, count in all_stacks:
        merged[path] = merged.get(path, 0) + count
    ordered = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    return "".join(f"{';'.join(path)} {count}\n" for path, count in ordered)


def speedscope(profiles: Iterable[tuple[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    """A speedscope file: one sampled profile per thread (per node and thread for fleets)."""
    frames: list[dict[str, Any]] = []
    index: dict[tuple[str, str, int], int] = {}
    out = []
    for node, profile in profiles:
        local = []
        for f in profile["frames"]:
            key = (f["name"], f["file"], f["line"])
            if key not in index:
                index[key] = len(frames)
                frames.append({"name": f["name"], "file": f["file"], "line": f["line"]})
            local.append(index[key])
        weight = 1.0 / float(profile["rate"])
        by_thread: dict[str, list[dict[str, Any]]] = {}
        for s in profile["stacks"]:
            by_thread.setdefault(str(s["thread"]), []).append(s)
        for thread, entries in by_thread.items():
            samples = [[local[i] for i in s["frames"]] for s in entries]
            weights = [s["count"] * weight for s in entries]
            out.append(
                {
                    "type": "sampled",
                    "name": f"{node} {thread}".strip(),
                    "unit": "seconds",
                    "startValue": 0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
            )
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": out,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": f"rpcctl {__version__}",
    }


def speedscope_text(profiles: Iterable[tuple[str, dict[str, Any]]], name: str) -> str:
    return json.dumps(speedscope(profiles, name), ensure_ascii=False) + "\n"


# -- SVG ---------------------------------------------------------------------------------------

WIDTH = 1200
FRAME_HEIGHT = 17
FONT_SIZE = 12
CHAR_WIDTH = 7.0  # a monospace character at FONT_SIZE, near enough to fit labels
MARGIN = 10
TOP = 40


class _Node:
    __slots__ = ("children", "name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.children: dict[str, _Node] = {}


def _tree(all_stacks: Stacks) -> _Node:
    root = _Node("all")
    for path, count in all_stacks:
        root.value += count
        node = root
        for name in path:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node(name)
            child.value += count
            node = child
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    """A warm colour from the function's name, the same name the same colour in every graph."""
    digest = hashlib.blake2b(name.split(" (", 1)[0].encode(), digest_size=3).digest()
    return f"rgb({205 + digest[0] % 50},{digest[1] % 230},{digest[2] % 55})"


def svg(all_stacks: Stacks, title: str) -> str:
    """A flame graph (the root at the bottom) as a standalone SVG document."""
    root = _tree(all_stacks)
    total = max(root.value, 1)
    depth = _depth(root)
    height = TOP + depth * FRAME_HEIGHT + MARGIN * 2
    scale = (WIDTH - 2 * MARGIN) / total
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" '
        f'font-size="{FONT_SIZE}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f8"/>',
        f'<text x="{WIDTH / 2:.0f}" y="24" text-anchor="middle" font-size="16">'
        f"{escape(title)}</text>",
    ]

    def draw(node: _Node, x: float, level: int) -> None:
        width = node.value * scale
        if width < 0.3:
            return  # too narrow to see; its share still counts in its parent's width
        y = height - MARGIN - (level + 1) * FRAME_HEIGHT
        share = 100.0 * node.value / total
        tip = f"{node.name} — {plural(node.value, 'sample')} ({share:.2f}%)"
        fill = "rgb(200,200,200)" if level == 0 else _colour(node.name)
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{FRAME_HEIGHT - 1}" '
            f'fill="{fill}" rx="2" ry="2"/>'
        )
        fits = int((width - 6) / CHAR_WIDTH)
        if fits >= 3:
            text = node.name if len(node.name) <= fits else node.name[: fits - 2] + ".."
            parts.append(f'<text x="{x + 3:.2f}" y="{y + FRAME_HEIGHT - 5}">{escape(text)}</text>')
        parts.append("</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, child_x, level + 1)
            child_x += child.value * scale

    draw(root, MARGIN, 0)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def title_of(profile: dict[str, Any], what: str) -> str:
    return (
        f"{what}: {plural(profile['samples'], 'sample')} at {profile['rate']:g} Hz "
        f"over {profile['seconds']:g} s"
    )
