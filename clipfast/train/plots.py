"""PNG plots of a run's ``metrics.jsonl``: loss, learning rate and accuracy curves.

Records are the trainer's: ``{"step", "epoch", "train/loss", "train/lr", ...}`` per logged step and
``{"step", "epoch", "val/zeroshot_top1", ...}`` per evaluation. Uses matplotlib's object API with the
Agg canvas (no pyplot, no global backend change, no display needed).
"""
import json
import logging
from pathlib import Path

__all__ = ["plot_metrics", "read_metrics"]

log = logging.getLogger(__name__)

_ACCURACY_MARKERS = ("top1", "top5", "R@", "accuracy", "acc")


def read_metrics(path) -> list[dict]:
    """The JSON objects of a JSON-lines file; malformed lines are skipped with a warning."""
    records, bad = [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
    if bad:
        log.warning("%s: skipped %d malformed line(s)", path, bad)
    return records


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r:
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _figure(title: str, ylabel: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="tight")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _accuracy_figure(records: list[dict], acc_keys: list[str]):
    """Classification accuracies (left) and retrieval recalls (right, when logged) vs step."""
    from matplotlib.figure import Figure

    panels = [("classification", [k for k in acc_keys if "R@" not in k]),
              ("retrieval", [k for k in acc_keys if "R@" in k])]
    panels = [(t, ks) for t, ks in panels if ks]
    fig = Figure(figsize=(6.4 * len(panels), 4.0), layout="tight")
    _, chance = _series(records, "val/chance_top1")
    for i, (title, ks) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy" if title == "classification" else "recall")
        ax.grid(True, alpha=0.3)
        for j, k in enumerate(ks):
            name = k.split("/", 1)[1]
            style = "--" if ("top5" in name or "R@5" in name) else ":" if "R@10" in name else "-"
            ax.plot(*_series(records, k), style, marker="o", markersize=3, color=f"C{j % 10}",
                    linewidth=2.2 if name in ("zeroshot_top1", "unseen_class_zeroshot_top1") else 1.2, label=name)
        if chance and title == "classification":
            ax.axhline(chance[-1], color="gray", linestyle="--", linewidth=1, label="chance top-1")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    return fig


def plot_metrics(metrics_path, out_dir) -> list:
    """Write ``loss.png``, ``lr.png`` and ``accuracy.png`` (those with data) under ``out_dir``.

    Args:
        metrics_path: the run's ``metrics.jsonl``.
        out_dir: folder for the PNGs (created).

    Returns:
        list of the written ``Path``s (empty when the file is missing or has no plottable data).

    Plots: every ``train/*loss*`` key vs step; ``train/lr``; every ``val/*`` key naming an accuracy
    (top1, top5; left panel, with the ``val/chance_top1`` level dashed when logged) or a recall (R@k;
    right panel) vs step.
    """
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        log.warning("no metrics file %s; nothing to plot", metrics_path)
        return []
    records = read_metrics(metrics_path)
    keys = sorted({k for r in records for k in r})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    loss_keys = [k for k in keys if k.startswith("train/") and "loss" in k]
    if loss_keys:
        fig, ax = _figure("training loss", "loss")
        for k in loss_keys:
            ax.plot(*_series(records, k), label=k.split("/", 1)[1], linewidth=1.2)
        ax.legend()
        written.append(_save(fig, out_dir / "loss.png"))

    if "train/lr" in keys:
        fig, ax = _figure("learning rate", "lr")
        ax.plot(*_series(records, "train/lr"), linewidth=1.2)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        written.append(_save(fig, out_dir / "lr.png"))

    acc_keys = [k for k in keys if k.startswith("val/") and any(m in k for m in _ACCURACY_MARKERS) and "chance" not in k]
    if acc_keys:
        written.append(_save(_accuracy_figure(records, acc_keys), out_dir / "accuracy.png"))
    return written
