"""MkDocs hooks: the pages whose tables are made from the code, at every ``make docs``.

``<!-- generated: configuration -->`` becomes the table ``python -m covidscan.settings``
prints (the settings' own defaults and descriptions), and ``<!-- generated: bench results -->``
the performance tables made from ``bench/results/*.json`` (``bench/results.py``). A marker
that a page lost, or one left in the built page, fails the build (``tests/test_docs.py``
checks both on the Markdown).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def generated() -> dict[str, str]:
    """Each marker and what replaces it."""
    if str(ROOT) not in sys.path:  # MkDocs restores sys.path after loading a hook
        sys.path.insert(0, str(ROOT))
    from bench.results import load, render
    from covidscan.settings import config_table

    return {
        "<!-- generated: configuration -->": config_table(),
        "<!-- generated: bench results -->": render(load()),
    }


def expand(markdown: str, replacements: dict[str, str] | None = None) -> str:
    for marker, text in (replacements or generated()).items():
        markdown = markdown.replace(marker, text)
    return markdown


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if "<!-- generated: " not in markdown:
        return markdown
    expanded = expand(markdown)
    if "<!-- generated: " in expanded:
        raise ValueError(f"{page.file.src_path}: a marker no hook knows: {expanded!r:.200}")
    return expanded
