"""Result rows: the columns a results.json row may carry (`RESULT_COLUMNS`, grouped as the README and docs show them),
the row name of a distilled model, and the markdown table of rows (`evaluation.tables` puts such tables into
markdown files)."""

from __future__ import annotations

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


# The README shows the columns in two tables: naming things, and finding them; docs/ablations.md compares
# label-everything with the cascade.
COLUMN_GROUPS = {
    "recognition": tuple(column for column in RESULT_COLUMNS if column[0].startswith(("zero_shot", "recognition"))),
    "segmentation": tuple(
        column for column in RESULT_COLUMNS if not column[0].startswith(("zero_shot", "recognition"))
    ),
    "instances": (
        ("instance_ap50", "label-everything AP50"),
        ("instance_ap", "AP"),
        ("panoptic_pq", "PQ"),
        ("instances_per_image", "instances / image"),
    ),
}


def format_results_table(rows: dict[str, dict], columns=RESULT_COLUMNS) -> str:
    """A markdown table, one row per model, the `columns` (`(key, title)` pairs; default `RESULT_COLUMNS`) in that
    order, '-' where a row lacks a metric; a row with none of the columns is left out."""
    header = "| model | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for name, row in rows.items():
        if all(row.get(key) is None for key, _ in columns):
            continue
        cells = [f"{row[key]:.3f}" if row.get(key) is not None else "-" for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
