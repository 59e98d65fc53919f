"""The evaluation report: plots as PNG and a multi-page PDF summary (matplotlib, Agg backend).

`classifier_report` draws, for a failure classifier: score timelines per test robot with
thresholds and failures marked, predicted-vs-actual mode overlays, probability
residuals per head and the confusion matrix. `regression_report` draws, for remaining
useful life: predicted-vs-actual scatter and overlays per unit, and residual plots.
Both return ``{relative path: bytes}`` so the caller writes them with the model,
atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.run import RunResult

FloatArray = npt.NDArray[np.float64]
REPORT_DIR = "report"
_MAX_TIMELINES = 4
_MAX_POINTS = 3000


def _figure(width: float = 10.0, height: float = 5.0) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _pdf(title: str, summary: Mapping[str, Any], figures: Sequence[tuple[str, Figure]]) -> bytes:
    from matplotlib.backends.backend_pdf import PdfPages

    buffer = io.BytesIO()
    with PdfPages(buffer, metadata={"Title": title, "Creator": "robotpm-train"}) as pdf:
        cover = _figure(8.3, 11.7)
        text = json.dumps(summary, indent=1, default=str)
        lines = text.splitlines()[:90]
        cover.text(0.05, 0.97, title, fontsize=14, weight="bold", va="top")
        cover.text(0.05, 0.93, "\n".join(lines), fontsize=6.5, family="monospace", va="top")
        pdf.savefig(cover)
        for _, fig in figures:
            pdf.savefig(fig)
    return buffer.getvalue()


def _bundle(
    title: str, summary: Mapping[str, Any], figures: Sequence[tuple[str, Figure]]
) -> dict[str, bytes]:
    files = {f"{REPORT_DIR}/{name}.png": _png(fig) for name, fig in figures}
    files[f"{REPORT_DIR}/report.pdf"] = _pdf(title, summary, figures)
    return files


def classifier_report(result: RunResult) -> dict[str, bytes]:
    """Plots and PDF of a failure classifier's evaluation on its test windows."""
    manifest, windows, proba = result.manifest, result.test, np.asarray(result.test_proba)
    columns = {cls: col for col, cls in enumerate(result.fitted.classes)}
    figures: list[tuple[str, Figure]] = []
    robots = list(dict.fromkeys(windows.robot.tolist()))[:_MAX_TIMELINES]
    for robot in robots:
        figures.append((f"timeline_{robot}", _timeline(windows, proba, manifest.heads, columns, robot)))
    figures.append(("predicted_vs_actual", _mode_overlay(windows, proba, columns, robots)))
    figures.append(("residuals", _probability_residuals(windows, proba, columns)))
    figures.append(("confusion_matrix", _confusion(result.evaluation.confusion, windows.classes)))
    summary = {
        "model": manifest.label,
        "task": manifest.task,
        "metrics": result.evaluation.metrics,
        "per_head": result.evaluation.per_head,
        "selection": result.evaluation.selection,
        "thresholds": {h.failure_mode: h.thresholds.model_dump() for h in manifest.heads},
        "lineage": manifest.training,
        "timings_s": result.timings,
        "events (robot, onset, mode, detected, lead time s, first head, false alarms)": [
            [
                row["robot"],
                row["onset"],
                row["mode"],
                row["detected"],
                row["lead_time_s"],
                row["first_head"],
                row["false_alarms"],
            ]
            for row in result.evaluation.events
        ],
    }
    return _bundle(f"RobotPM model report: {manifest.label}", summary, figures)


def _robot_rows(windows: Any, robot: str) -> npt.NDArray[np.int64]:
    """Rows of one robot, thinned to at most `_MAX_POINTS` for plotting."""
    rows = np.flatnonzero(windows.robot == robot)
    step = max(1, len(rows) // _MAX_POINTS)
    return rows[::step]


def _timeline(windows: Any, proba: FloatArray, heads: Any, columns: dict[int, int], robot: str) -> Figure:
    fig = _figure(11, 4.5)
    ax = fig.add_subplot()
    mask = _robot_rows(windows, robot)
    t = windows.end_ts[mask]
    hours = (t - t.min()) / 3600.0 if len(t) else t
    colours = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:green", "tab:blue"]
    for i, head in enumerate(heads):
        cls = windows.classes.index(head.failure_mode)
        if cls not in columns:
            continue
        colour = colours[i % len(colours)]
        ax.plot(hours, proba[mask, columns[cls]], lw=0.8, color=colour, label=head.failure_mode)
        ax.axhline(head.thresholds.warning, color=colour, lw=0.6, ls="--")
    failing = np.isfinite(windows.rul_s[mask]) & (windows.mode[mask] != "healthy")
    if failing.any() and len(t):
        failures = np.unique(np.round((t[failing] + windows.rul_s[mask][failing] - t.min()) / 3600.0, 4))
        for x in failures:
            ax.axvline(x, color="black", lw=0.8)
        ax.plot([], [], color="black", lw=0.8, label="failure")
    positive = windows.label[mask] > 0
    ax.fill_between(hours, 0, 1, where=positive, color="grey", alpha=0.15, step="mid", label="labelled fault")
    ax.set(
        xlabel="hours",
        ylabel="score (probability)",
        ylim=(0, 1.02),
        title=f"scores of {robot} (dashed: warning)",
    )
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    return fig


def _mode_overlay(windows: Any, proba: FloatArray, columns: dict[int, int], robots: Sequence[str]) -> Figure:
    fig = _figure(11, 2.2 * max(1, len(robots)))
    full = np.zeros((len(windows), len(windows.classes)))
    for cls, col in columns.items():
        full[:, cls] = proba[:, col]
    predicted = full.argmax(axis=1)
    for i, robot in enumerate(robots):
        ax = fig.add_subplot(len(robots), 1, i + 1)
        mask = _robot_rows(windows, robot)
        t = windows.end_ts[mask]
        hours = (t - t.min()) / 3600.0 if len(t) else t
        ax.step(hours, windows.label[mask], where="post", lw=1.2, label="actual")
        ax.step(hours, predicted[mask], where="post", lw=0.7, alpha=0.8, label="predicted")
        ax.set_yticks(range(len(windows.classes)), windows.classes, fontsize=6)
        ax.set_title(f"{robot}: predicted vs actual mode", fontsize=8)
        ax.legend(loc="upper right", fontsize=6)
    return fig


def _probability_residuals(windows: Any, proba: FloatArray, columns: dict[int, int]) -> Figure:
    fig = _figure(11, 4)
    classes = [c for c in sorted(columns) if c != 0]
    for i, cls in enumerate(classes):
        ax = fig.add_subplot(1, max(1, len(classes)), i + 1)
        residual = (windows.label == cls).astype(float) - proba[:, columns[cls]]
        ax.hist(residual, bins=40, range=(-1, 1), color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(f"{windows.classes[cls]}: 1[label] − p", fontsize=8)
    return fig


def _confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    matrix = np.asarray(confusion, dtype=float)
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted (argmax)", ylabel="actual", title="confusion matrix (test windows)")
    return fig


def regression_report(
    title: str,
    actual: FloatArray,
    predicted: FloatArray,
    groups: npt.NDArray[Any],
    order: FloatArray,
    summary: Mapping[str, Any],
    unit: str = "cycles",
) -> dict[str, bytes]:
    """Plots and PDF of a remaining-useful-life regression: overlays per unit, scatter, residuals."""
    figures: list[tuple[str, Figure]] = []
    fig = _figure(6, 6)
    ax = fig.add_subplot()
    ax.scatter(actual, predicted, s=4, alpha=0.4)
    top = float(max(np.max(actual), np.max(predicted))) if len(actual) else 1.0
    ax.plot([0, top], [0, top], color="black", lw=0.8)
    ax.set(xlabel=f"actual RUL ({unit})", ylabel=f"predicted RUL ({unit})", title="predicted vs actual")
    figures.append(("predicted_vs_actual", fig))
    fig = _figure(11, 6)
    units = list(dict.fromkeys(np.asarray(groups).tolist()))[:6]
    for i, unit_id in enumerate(units):
        ax = fig.add_subplot(2, 3, i + 1)
        mask = np.asarray(groups) == unit_id
        sort = np.argsort(order[mask])
        ax.plot(order[mask][sort], actual[mask][sort], label="actual")
        ax.plot(order[mask][sort], predicted[mask][sort], label="predicted")
        ax.set_title(f"unit {unit_id}", fontsize=8)
        ax.set_xlabel(unit, fontsize=7)
        ax.set_ylabel(f"RUL ({unit}, capped)", fontsize=7)
        ax.legend(fontsize=6)
    figures.append(("overlay_units", fig))
    fig = _figure(11, 4)
    residual = predicted - actual
    ax = fig.add_subplot(1, 2, 1)
    ax.scatter(actual, residual, s=4, alpha=0.4)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel=f"actual RUL ({unit})", ylabel="predicted − actual", title="residuals")
    ax = fig.add_subplot(1, 2, 2)
    ax.hist(residual, bins=50)
    ax.set(xlabel="predicted − actual", title="residual distribution")
    figures.append(("residuals", fig))
    return _bundle(title, summary, figures)


def binary_report(
    title: str, labels: npt.NDArray[Any], scores: FloatArray, threshold: float, summary: Mapping[str, Any]
) -> dict[str, bytes]:
    """Plots and PDF of a binary failure classifier: score distribution, PR curve, confusion."""
    from sklearn.metrics import confusion_matrix, precision_recall_curve

    figures: list[tuple[str, Figure]] = []
    fig = _figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    ax.hist([scores[labels == 0], scores[labels == 1]], bins=40, label=["no failure", "failure"], log=True)
    ax.axvline(threshold, color="black", lw=0.8)
    ax.set(xlabel="score", title="score by actual class")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    precision, recall, _ = precision_recall_curve(labels, scores)
    ax.plot(recall, precision)
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    figures.append(("scores", fig))
    matrix = confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1]).tolist()
    figures.append(("confusion_matrix", _confusion(matrix, ["no failure", "failure"])))
    return _bundle(title, summary, figures)
