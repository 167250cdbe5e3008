"""Result tables in markdown files, written from the results.json they show, never by hand.

A table's place is marked in the file by a comment naming its JSON (relative to the file) and its column group
(`recognition`, `segmentation` or `instances`, see `COLUMN_GROUPS`)::

    <!-- results-table: src/transformers_samclip/mosaic/distilled/results.json recognition -->
    | model | ... |
    <!-- /results-table -->

Regenerate every marked table of a file after a new results.json (tests/test_readme.py checks README.md and
docs/*.md)::

    python -m transformers_samclip.evaluation.tables README.md docs/ablations.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .results import COLUMN_GROUPS, format_results_table

_BLOCK = re.compile(r"(<!-- results-table: (\S+) (\w+) -->\n)(.*?)(<!-- /results-table -->)", re.S)


def render_results_tables(text: str, base: Path) -> str:
    """`text` with every marked table rewritten from its results.json (paths relative to `base`)."""

    def table(match: re.Match) -> str:
        path, group = base / match.group(2), match.group(3)
        if group not in COLUMN_GROUPS:
            raise ValueError(
                f"unknown column group {group!r} in {match.group(1).strip()}; use one of {sorted(COLUMN_GROUPS)}."
            )
        rows = json.loads(path.read_text())["rows"]
        return match.group(1) + format_results_table(rows, COLUMN_GROUPS[group]) + "\n" + match.group(5)

    return _BLOCK.sub(table, text)


def update_results_tables(path: Path | str) -> bool:
    """Rewrite the marked tables of the markdown file `path`; returns whether anything changed."""
    path = Path(path)
    text = path.read_text()
    updated = render_results_tables(text, path.parent)
    if updated != text:
        path.write_text(updated)
    return updated != text


if __name__ == "__main__":
    for name in sys.argv[1:] or ["README.md"]:
        print(f"{name}: {'updated' if update_results_tables(name) else 'unchanged'}")
