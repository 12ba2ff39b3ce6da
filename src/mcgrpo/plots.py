"""Plot data for `dvc plots` and PNGs for the report (matplotlib, no display needed)."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mcgrpo.fileio import atomic_path, write_text  # noqa: E402

# dvclive metric files (under <live>/plots/metrics/) worth a panel each, with their titles.
TRAINING_CURVES = {
    "reward.tsv": "mean reward",
    "reward_std.tsv": "reward std (within group)",
    "completions/mean_length.tsv": "completion length (tokens)",
    "kl.tsv": "KL to the base model",
    "loss.tsv": "loss",
}


MODELS = (("baseline", "base"), ("finetuned", "fine-tuned"))


def accuracy_rows(base: dict, tuned: dict) -> list[dict]:
    """Long format, a row per variant x model: one bar each in `dvc plots` (bar_horizontal)."""
    rows = []
    for variant in (v for v in base if v in tuned):
        for key, label in MODELS:
            accuracy = (base if key == "baseline" else tuned)[variant]["accuracy"]
            rows.append({"variant": variant, "model": key, "label": f"{variant} / {label}", "accuracy": accuracy})
    return rows


def write_accuracy_csv(path, rows: list[dict]) -> None:
    header = "variant,model,label,accuracy\n"
    write_text(path, header + "".join(f"{r['variant']},{r['model']},{r['label']},{r['accuracy']}\n" for r in rows))


def _save(fig, path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy(path, rows: list[dict]) -> None:
    """Grouped bars: a group per prompt variant, base and fine-tuned side by side."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    value = {(r["variant"], r["model"]): r["accuracy"] for r in rows}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    width = 0.38
    for k, (key, label) in enumerate(MODELS):
        xs = [i + (k - 0.5) * width for i in range(len(variants))]
        bars = ax.bar(xs, [value[(v, key)] for v in variants], width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per prompt variant")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def read_curve(tsv: Path) -> tuple[list[int], list[float]]:
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    value = [k for k in rows[0] if k not in ("step", "timestamp")][0] if rows else None
    return [int(r["step"]) for r in rows], [float(r[value]) for r in rows]


def plot_training(path, live_dir) -> list[str]:
    """One panel per available curve; returns the names plotted (KL is absent when beta = 0)."""
    metrics_dir = Path(live_dir) / "plots" / "metrics"
    curves = {title: read_curve(metrics_dir / name) for name, title in TRAINING_CURVES.items()
              if (metrics_dir / name).exists()}
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(3.2 * max(len(curves), 1), 2.8), squeeze=False)
    for ax, (title, (steps, values)) in zip(axes[0], curves.items()):
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    if not curves:
        axes[0][0].text(0.5, 0.5, "no training curves logged", ha="center")
    _save(fig, path)
    return list(curves)
