"""Reports in the paper's layout: Markdown tables and the Figure-4 timeline plot.

Tables are plain Markdown so they paste into an issue or README; the plot
uses matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, no display needed) and is imported only when a plot is drawn.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

#: The paper's DAVIS 2016 validation results for JITNet (supplement, Table 5).
PAPER_DAVIS = {
    "A": {"J": 0.642, "F": 0.680},
    "C": {"J": 0.811, "F": 0.831},
}
DAVIS_CONFIGS = {
    "A": "adapt on the first ground-truth frame only",
    "C": "first frame + ground-truth mask every 16 frames",
}

Column = Union[str, tuple[str, str]]


def format_value(value: Any, digits: int = 3) -> str:
    """Cell text: floats rounded, missing values and NaN as '-', pipes escaped."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table; ``columns`` are keys or (key, header) pairs.

    Keys missing from a row print as '-', so rows of different methods can
    share one table.
    """
    if not columns:
        raise ValueError("a table needs at least one column")
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    lines = [
        "| " + " | ".join(format_value(h) for h in headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(keys))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(k), digits) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _percent(x: Optional[float]) -> Optional[str]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100.0 * x:.1f}%"


def _speed(x: Optional[float]) -> Optional[str]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}x"


def lvs_table(runs: Sequence[Mapping[str, Any]], *, title: Optional[str] = None) -> str:
    """The stream evaluation in the paper's Table 2 layout, one row per method.

    Each run is a mapping with ``method``, ``iou_per_group`` ({group name:
    mean IoU}), ``mean_iou``, ``teacher_fraction`` (0..1) and optionally
    ``updates``, ``speedup_ms``, ``speedup_flops``.  Group columns appear in
    the order they are first seen.
    """
    groups: list[str] = []
    for run in runs:
        for g in run.get("iou_per_group", {}) or {}:
            if g not in groups:
                groups.append(g)
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "method": run["method"],
            "mean_iou": run.get("mean_iou"),
            "teacher": _percent(run.get("teacher_fraction")),
            "updates": run.get("updates"),
            "speedup_ms": _speed(run.get("speedup_ms")),
            "speedup_flops": _speed(run.get("speedup_flops")),
        }
        for g in groups:
            row[f"group:{g}"] = (run.get("iou_per_group") or {}).get(g)
        rows.append(row)
    columns: list[Column] = [("method", "Method")]
    columns += [(f"group:{g}", f"{g} IoU") for g in groups]
    columns += [
        ("mean_iou", "Mean IoU"),
        ("teacher", "Teacher frames"),
        ("updates", "Updates"),
        ("speedup_ms", "Speedup (time)"),
        ("speedup_flops", "Speedup (FLOPs)"),
    ]
    head = f"### {title}\n\n" if title else ""
    return head + markdown_table(rows, columns)


def davis_table(
    per_sequence: Mapping[str, Mapping[str, Mapping[str, float]]],
    config: Optional[str] = None,
    *,
    title: Optional[str] = None,
) -> str:
    """The DAVIS evaluation: one row per sequence, their mean, and the paper's reference row.

    ``per_sequence`` maps a sequence name to ``{"J": {"mean", "recall",
    "decay"}, "F": {...}}`` (what ``davis_metrics.evaluate_sequence``
    returns).  The mean row averages each statistic over sequences, as the
    official code averages over objects.  With ``config`` "A" or "C" the
    paper's reported J and F means are added for comparison (the paper gives
    no recall or decay).
    """
    if not per_sequence:
        raise ValueError("no sequence results to tabulate")
    if config is not None and config not in PAPER_DAVIS:
        raise ValueError(f"config must be one of {sorted(PAPER_DAVIS)}, got {config!r}")
    stats = ("mean", "recall", "decay")
    rows: list[dict[str, Any]] = []
    for name, res in per_sequence.items():
        row: dict[str, Any] = {"sequence": name}
        for m in ("J", "F"):
            for s in stats:
                row[f"{m}_{s}"] = res[m][s]
        rows.append(row)
    mean_row: dict[str, Any] = {"sequence": "**Mean**"}
    for key in rows[0]:
        if key != "sequence":
            mean_row[key] = float(np.nanmean([r[key] for r in rows]))
    rows.append(mean_row)
    if config is not None:
        ref = PAPER_DAVIS[config]
        rows.append({"sequence": f"Paper (JITNet, config {config}, DAVIS 2016 val)", "J_mean": ref["J"], "F_mean": ref["F"]})
    columns: list[Column] = [("sequence", "Sequence")]
    for m in ("J", "F"):
        columns += [(f"{m}_{s}", f"{m} {s}") for s in stats]
    if title is None and config is not None:
        title = f"DAVIS 2016, configuration {config} ({DAVIS_CONFIGS[config]})"
    head = f"### {title}\n\n" if title else ""
    return head + markdown_table(rows, columns)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average that skips NaNs (frames with nothing to score)."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or v.size == 0:
        return v
    ok = ~np.isnan(v)
    kernel = np.ones(int(window))
    sums = np.convolve(np.where(ok, v, 0.0), kernel, mode="same")
    counts = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_timeline(
    per_frame_iou: Mapping[str, Sequence[float]],
    updates_per_interval: Union[Sequence[int], Mapping[str, Sequence[int]]],
    path: Union[str, Path],
    *,
    interval: Optional[int] = None,
    fps: Optional[float] = None,
    smooth: int = 1,
    title: Optional[str] = None,
) -> Path:
    """Figure-4-style PNG: mean IoU over time per method (top), updates per interval (bottom).

    ``updates_per_interval`` is one series (the online student's) or one per
    method; ``interval`` is its length in frames (default: the longest IoU
    series divided evenly).  With ``fps`` the time axis is in seconds.
    ``smooth`` > 1 draws a moving average, since per-frame IoU is noisy.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # the plot is optional; tables work without it
        raise ImportError("plots need matplotlib: pip install 'jitnet-edge[eval]' (or `make install`)") from exc

    if not per_frame_iou:
        raise ValueError("per_frame_iou is empty: give at least one method's per-frame IoU")
    updates = dict(updates_per_interval) if isinstance(updates_per_interval, Mapping) else {"updates": list(updates_per_interval)}
    n_frames = max(len(v) for v in per_frame_iou.values())
    n_intervals = max((len(v) for v in updates.values()), default=0)
    if interval is None:
        interval = max(1, math.ceil(n_frames / n_intervals)) if n_intervals else 1
    scale = 1.0 / fps if fps else 1.0
    xlabel = "time (s)" if fps else "frame"

    fig = Figure(figsize=(10, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_iou, ax_upd = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for method, series in per_frame_iou.items():
        y = moving_average(series, smooth)
        ax_iou.plot(np.arange(len(y)) * scale, y, label=method, linewidth=1.2)
    ax_iou.set_ylabel("mean IoU" + (f" (avg of {smooth} frames)" if smooth > 1 else ""))
    ax_iou.set_ylim(0.0, 1.0)
    ax_iou.grid(True, alpha=0.3)
    ax_iou.legend(loc="lower left", fontsize="small", ncol=2)
    width = interval * scale / max(1, len(updates))
    for k, (method, series) in enumerate(updates.items()):
        x = (np.arange(len(series)) * interval + k * interval / max(1, len(updates))) * scale
        ax_upd.bar(x, series, width=width, align="edge", label=method)
    ax_upd.set_ylabel(f"updates / {interval} frames")
    ax_upd.set_xlabel(xlabel)
    ax_upd.grid(True, axis="y", alpha=0.3)
    if len(updates) > 1:
        ax_upd.legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def updates_per_interval(update_frames: Iterable[int], n_frames: int, interval: int) -> list[int]:
    """Counts of training updates in consecutive windows of ``interval`` frames.

    ``update_frames`` lists the frame index of each update (repeat an index
    for several updates on one teacher frame).
    """
    if interval < 1 or n_frames < 0:
        raise ValueError("interval must be >= 1 and n_frames >= 0")
    counts = [0] * math.ceil(n_frames / interval)
    for f in update_frames:
        if not 0 <= f < n_frames:
            raise ValueError(f"update at frame {f} is outside [0, {n_frames})")
        counts[f // interval] += 1
    return counts
