"""Result rows and tables: the columns every results.json row may carry (`RESULT_COLUMNS`, grouped as the README
shows them), the markdown table of rows, and the tables in markdown files, written from the results.json they show,
never by hand.

A table's place is marked in the file by a comment naming its JSON (relative to the file) and its column group
(`recognition` or `segmentation`, see `COLUMN_GROUPS`)::

    <!-- results-table: src/transformers_samclip/mosaic/distilled/results.json recognition -->
    | model | ... |
    <!-- /results-table -->

Regenerate every marked table of a file after a new results.json (tests/test_readme.py checks they agree)::

    python -m transformers_samclip.evaluation.tables README.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# The row `samclip distill` writes for the model it saved, in the results.json beside it.
DISTILLED_ROW = "SAM-CLIP (distilled)"
# (result key, table header), in the order of the paper's tables.
RESULT_COLUMNS = (
    ("zero_shot_top1", "zero-shot top-1"),
    ("zero_shot_top1_heldout", "top-1 held-out look"),
    ("zero_shot_top1_raw", "top-1 raw photos"),
    ("box_miou", "box mIoU"),
    ("point1_miou", "1-point mIoU"),
    ("point3_miou", "3-point mIoU"),
    ("recognition_crop", "recognition crops"),
    ("recognition_masked_crop", "recognition masked crops"),
    ("recognition_one_pass", "recognition one pass"),
    ("semseg_miou", "semseg mIoU"),
    ("semseg_refined_miou", "refined semseg mIoU"),
    ("semseg_instances_miou", "one-pass painted semseg mIoU"),
    ("instance_ap50", "label-everything AP50"),
    ("detection_box_ap50", "detection box AP50"),
    ("panoptic_pq", "PQ"),
    ("instance_f1", "F1@0.5"),
    ("instance_f1_rejected", "F1@0.5 with none-of-these"),
)


# The README shows the columns in two tables: naming things, and finding them.
COLUMN_GROUPS = {
    "recognition": tuple(column for column in RESULT_COLUMNS if column[0].startswith(("zero_shot", "recognition"))),
    "segmentation": tuple(
        column for column in RESULT_COLUMNS if not column[0].startswith(("zero_shot", "recognition"))
    ),
}


def format_results_table(rows: dict[str, dict], columns=RESULT_COLUMNS) -> str:
    """A markdown table, one row per model, the `columns` (`(key, title)` pairs; default `RESULT_COLUMNS`) in that
    order, '-' where a row lacks a metric."""
    header = "| model | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for name, row in rows.items():
        cells = [f"{row[key]:.3f}" if row.get(key) is not None else "-" for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
