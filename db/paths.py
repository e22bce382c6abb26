"""Paths under a store's root, given as relative keys that must not leave it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def path_under(root: Path, relative: str, what: str) -> Path:
    """``root`` joined with ``relative``, refusing absolute keys and ``..`` parts.

    Checked lexically, not with ``Path.resolve()``: this runs for every scan a worker reads.

    Raises:
        ValueError: the key would leave ``root`` (``what`` names it in the message).
    """
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts:
        raise ValueError(f"{what} {relative!r} escapes {root}")
    return Path(root).joinpath(*parts)
