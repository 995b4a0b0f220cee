"""Run reports: the base-vs-final table that R1-style experiments print at the end.

Its columns are the R1 paper's evaluation metrics (arXiv:2501.12948, Sec. 3).
"""

from __future__ import annotations

import os

from r1jax.train import metrics as metrics_lib

#: (metric key in metrics.jsonl, column title, is a rate shown in percent).
COLUMNS = (
    ("eval/greedy_accuracy", "greedy acc", True),
    ("eval/pass@1", "pass@1", True),
    ("eval/lenient_accuracy", "lenient acc", True),
    ("eval/format_rate", "format", True),
    ("eval/response_length", "mean length", False),
)


def eval_rows(metrics_path: str | os.PathLike) -> list[dict]:
    """The logged evaluation records (those with an `eval/pass@1`), in step order."""
    rows = [r for r in metrics_lib.read_jsonl(metrics_path) if "eval/pass@1" in r]
    return sorted(rows, key=lambda r: r["step"])


def _cell(row: dict, key: str, percent: bool) -> str:
    if key not in row:
        return "-"
    return f"{100 * row[key]:.1f}%" if percent else f"{row[key]:.1f}"


def base_vs_final(metrics_path: str | os.PathLike) -> str:
    """A Markdown table: the step-0 evaluation (the base model) against the last one."""
    rows = eval_rows(metrics_path)
    if not rows:
        return "(no evaluation logged)"
    first, last = rows[0], rows[-1]
    header = "| model | step | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, row in (("base", first), ("final", last)):
        cells = " | ".join(_cell(row, key, pct) for key, _, pct in COLUMNS)
        lines.append(f"| {name} | {row['step']} | {cells} |")
    return "\n".join(lines)
