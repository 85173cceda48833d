"""How counts read in messages, on both sides: ``1 check``, ``2 checks``."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """*count* and *noun*, plural unless *count* is 1 (*nouns*, else *noun* + "s")."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
