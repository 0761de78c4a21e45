"""The product of `tasktune compress`: compress_report.json, a printed table, and a PNG of metric vs size and
metric vs speed. One row per variant; the uncompressed model is the first row and every ratio is against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_FILE = "compress_report.json"
PLOT_FILE = "compress_report.png"
SAVES_DISK = 0.9
"""A variant whose weights take less than this share of the uncompressed bytes saves disk."""
SAVES_TIME = 1.05
"""... and one at most this much faster than the uncompressed model (same prompts, same batch) saves no time."""


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def speed_of(row: dict[str, Any]) -> float | None:
    """The speed a row is compared by: generated tokens/s for LLMs and GGUF files, examples/s for heads."""
    return row.get("examples_per_s") if row["kind"] == "head" else row.get("generate_tokens_per_s")


def speedup_of(row: dict[str, Any]) -> float | None:
    """`speed_of` the row against the uncompressed model (set by `annotate`)."""
    return row.get("examples_per_s_ratio") if row["kind"] == "head" else row.get("generate_speedup")


def annotate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ratios and deltas against the first row, and the plain-language notes (disk vs time)."""
    base = rows[0]
    for row in rows:
        row["size_ratio"] = _ratio(row.get("bytes"), base.get("bytes"))
        row["examples_per_s_ratio"] = _ratio(row.get("examples_per_s"), base.get("examples_per_s"))
        row["generate_speedup"] = _ratio(row.get("generate_tokens_per_s"), base.get("generate_tokens_per_s"))
        value, reference = row.get("metric_value"), base.get("metric_value")
        row["metric_delta"] = value - reference if value is not None and reference is not None else None
        if row is base or row.get("skipped"):
            continue
        speedup = speedup_of(row)
        size = row["size_ratio"]
        if row.get("details", {}).get("sparsity") is not None:
            row["notes"].append("zeros are stored dense: sparsity saves neither disk nor time here without a "
                                "sparse kernel (2:4 kernels need a CUDA GPU); it is a step toward one")
        elif size is not None and size < SAVES_DISK and speedup is not None and speedup < SAVES_TIME:
            row["notes"].append(f"saves disk (x{size:.2f} of the bytes) but not time on this machine "
                                f"(speed x{speedup:.2f})")
        elif speedup is not None and speedup >= SAVES_TIME:
            row["notes"].append(f"faster on this machine: x{speedup:.2f}")
    return rows


def _num(value: Any, fmt: str, unit: str = "") -> str:
    return "-" if value is None else format(value, fmt) + unit


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table plus the notes, for the terminal."""
    metric = report["metric"]
    head = (f"{'variant':24s} {'params':>9s} {'MB':>8s} {'size':>6s} {'RSS MB':>7s} {'ex/s':>7s} {'gen tok/s':>9s} "
            f"{'speed':>6s} {metric:>9s} {'delta':>8s}")
    lines = [f"compress report: {report['source']} on {report['task']} ({report['eval_rows']} {report['split']} rows)",
             head, "-" * len(head)]
    for row in report["rows"]:
        if row.get("skipped"):
            lines.append(f"{row['variant']:24s} skipped: {row['notes'][0] if row['notes'] else ''}")
            continue
        rss, params, size = row.get("peak_rss_bytes"), row.get("params"), row.get("bytes")
        speed = speedup_of(row)
        lines.append(
            f"{row['variant']:24s} {_num(params and params / 1e6, '8.1f', 'M'):>9s} "
            f"{_num(size and size / 1e6, '8.1f'):>8s} {_num(row['size_ratio'], '5.2f', 'x'):>6s} "
            f"{_num(rss and rss / 1e6, '7.0f'):>7s} {_num(row.get('examples_per_s'), '7.2f'):>7s} "
            f"{_num(row.get('generate_tokens_per_s'), '9.1f'):>9s} {_num(speed, '5.2f', 'x'):>6s} "
            f"{_num(row.get('metric_value'), '9.4f'):>9s} {_num(row.get('metric_delta'), '+8.4f'):>8s}")
    notes = [f"  {row['variant']}: {note}" for row in report["rows"] for note in row["notes"] if not row.get("skipped")]
    if notes:
        lines += ["notes:", *notes]
    check = report.get("baseline_speed_recheck")
    if check:
        lines.append(f"speed noise: the uncompressed model generated {check['first']:.1f} tok/s first and "
                     f"{check['last']:.1f} tok/s at the end of this run")
    lines.append("speed: generated tokens/s (LLMs, GGUF) or examples/s (heads) against the uncompressed model; "
                 "RSS: peak memory of a fresh process that loads the variant and runs it once (Python and torch "
                 "included)")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> Path | None:
    """Two panels: task metric against MB on disk, and against speed (relative to the uncompressed model)."""
    points = [r for r in report["rows"] if not r.get("skipped") and r.get("metric_value") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (size_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for row in points:
        speed = speedup_of(row)
        marker = "*" if row is report["rows"][0] else "o"
        size_ax.scatter(row["bytes"] / 1e6, row["metric_value"], marker=marker, s=80)
        size_ax.annotate(row["variant"], (row["bytes"] / 1e6, row["metric_value"]), fontsize=8,
                         xytext=(4, 4), textcoords="offset points")
        if speed is not None:
            speed_ax.scatter(speed, row["metric_value"], marker=marker, s=80)
            speed_ax.annotate(row["variant"], (speed, row["metric_value"]), fontsize=8, xytext=(4, 4),
                              textcoords="offset points")
    speeds = [s for r in points if (s := speedup_of(r))]
    if speeds and max(speeds) / min(speeds) > 20:  # a head next to LLMs: ratios over two orders of magnitude
        speed_ax.set_xscale("log")
    size_ax.set_xlabel("weights on disk (MB)")
    speed_ax.set_xlabel("speed vs uncompressed (LLMs, GGUF: generated tok/s; heads: examples/s)")
    for ax in (size_ax, speed_ax):
        ax.set_ylabel(f"{report['task']} {report['metric']}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"tasktune compress: {report['source']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """compress_report.json and compress_report.png into out_dir; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    if plot_report(report, out_dir / PLOT_FILE):
        report["plot"] = str(out_dir / PLOT_FILE)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return path
