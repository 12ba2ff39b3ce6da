"""Plot data for `dvc plots` and PNGs for the report (matplotlib, no display needed)."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mcgrpo.fileio import atomic_path  # noqa: E402
from mcgrpo.rewards import mc_reward  # noqa: E402

# dvclive metric files (under <live>/plots/metrics/) worth a panel each, with their titles.
TRAINING_CURVES = {
    "reward.tsv": "mean reward",
    "reward_std.tsv": "reward std (within group)",
    "completions/mean_length.tsv": "completion length (tokens)",
    "kl.tsv": "KL to the base model",
    "loss.tsv": "loss",
}


MODELS = (("baseline", "base"), ("finetuned", "fine-tuned"))


def accuracy_rows(base: dict, tuned: dict | None = None) -> list[dict]:
    """Long format, a row per variant x model (one bar each in `dvc plots`), with the 95% interval.
    Without `tuned`: the base model's rows alone (the dataset notebook, before any training)."""
    rows = []
    models = MODELS if tuned is not None else MODELS[:1]
    for variant in (v for v in base if tuned is None or v in tuned):
        for key, label in models:
            m = (base if key == "baseline" else tuned)[variant]
            rows.append({"variant": variant, "model": key, "label": f"{variant} / {label}", "accuracy": m["accuracy"],
                         "ci_low": m["accuracy_ci_low"], "ci_high": m["accuracy_ci_high"]})
    return rows


def source_rows(base: dict, tuned: dict) -> list[dict]:
    """A row per variant x source x model: accuracy broken down by data source (e.g. RACE middle/high)."""
    rows = []
    for variant in (v for v in base if v in tuned):
        for source in base[variant]["by_source"]:
            for key, label in MODELS:
                group = (base if key == "baseline" else tuned)[variant]["by_source"].get(source, {})
                rows.append({"variant": variant, "source": source, "model": key,
                             "label": f"{variant} / {source} / {label}", "accuracy": group.get("accuracy", 0.0),
                             "n": group.get("n", 0)})
    return rows


def write_csv(path, rows: list[dict]) -> None:
    """Rows as CSV (for `dvc plots`), quoted where a value holds a comma or a quote (a source name may)."""
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _save(fig, path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _grouped_bars(ax, groups: list[str], value, err=None, models=MODELS) -> None:
    """The models side by side for each group (base and fine-tuned by default); value(group, model) -> float."""
    width = 0.76 / len(models)
    for k, (key, label) in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(groups))]
        heights = [value(g, key) for g in groups]
        yerr = None
        if err:
            lows, highs = zip(*(err(g, key) for g in groups))
            yerr = [[max(h - lo, 0) for h, lo in zip(heights, lows)], [max(hi - h, 0) for h, hi in zip(heights, highs)]]
        bars = ax.bar(xs, heights, width, label=label, yerr=yerr, capsize=3)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")


def plot_accuracy(path, rows: list[dict]) -> None:
    """Grouped bars per prompt variant, base vs fine-tuned, with bootstrap 95% intervals."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["variant"], r["model"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(variants), 3.2))
    _grouped_bars(ax, variants, lambda v, m: by[(v, m)]["accuracy"],
                  lambda v, m: (by[(v, m)]["ci_low"], by[(v, m)]["ci_high"]),
                  models=[m for m in MODELS if any(r["model"] == m[0] for r in rows)])
    ax.set_title("Accuracy per prompt variant (95% CI)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_by_source(path, rows: list[dict]) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["variant"], r["source"], r["model"]): r["accuracy"] for r in rows}
    fig, axes = plt.subplots(1, max(len(variants), 1), figsize=(3.4 * max(len(variants), 1), 3), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        sources = list(dict.fromkeys(r["source"] for r in rows if r["variant"] == variant))
        _grouped_bars(ax, sources, lambda s, m, v=variant: by[(v, s, m)])
        ax.set_title(f"{variant}: accuracy by source", fontsize=9)
    axes[0][0].legend(loc="upper left", fontsize=7)
    _save(fig, path)


def plot_reward_distribution(path, base_rows: list[dict], tuned_rows: list[dict], variant: str, weights: dict) -> None:
    """Histogram of mc_reward (with the training weights) per completion, base vs fine-tuned, trained variant."""
    fig, ax = plt.subplots(figsize=(5, 3))
    values = []
    for rows in (base_rows, tuned_rows):
        rows = [r for r in rows if r["variant"] == variant]
        values.append(mc_reward([r["completion"] for r in rows], [r["answer"] for r in rows],
                                [r["n_options"] for r in rows], weights=weights, variant=variant,
                                options=[r.get("options") for r in rows]))
    top = max([max(v) for v in values if v] + [1.0])
    ax.hist(values, bins=12, range=(0, top), label=[label for _, label in MODELS])
    ax.set_xlabel(f"reward per completion ({variant} prompt)")
    ax.set_ylabel("completions")
    ax.set_title("Reward distribution on the eval set")
    ax.legend(fontsize=8)
    _save(fig, path)


def read_curve(tsv: Path) -> tuple[list[int], list[float]]:
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    value = [k for k in rows[0] if k not in ("step", "timestamp")][0] if rows else None
    return [int(r["step"]) for r in rows], [float(r[value]) for r in rows]


def plot_training(path, live_dir) -> list[str]:
    """One panel per available curve (reward with its ±std band); returns the names plotted."""
    metrics_dir = Path(live_dir) / "plots" / "metrics"
    curves = {title: read_curve(metrics_dir / name) for name, title in TRAINING_CURVES.items()
              if (metrics_dir / name).exists()}
    std = curves.pop(TRAINING_CURVES["reward_std.tsv"], None)
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(3.2 * max(len(curves), 1), 2.8), squeeze=False)
    for ax, (title, (steps, values)) in zip(axes[0], curves.items()):
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        if title == TRAINING_CURVES["reward.tsv"] and std and len(std[1]) == len(values):
            ax.fill_between(steps, [v - s for v, s in zip(values, std[1])], [v + s for v, s in zip(values, std[1])],
                            alpha=0.25, label="± std within groups")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    if not curves:
        axes[0][0].text(0.5, 0.5, "no training curves logged", ha="center")
    _save(fig, path)
    return list(curves) + (["reward std"] if std else [])


def plot_calibration(path, bins: list[dict], metrics: dict) -> None:
    """Reliability diagram of the learned reward on held-out questions (or a note saying why there is none)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    if bins:
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                label=f"reward model (AUC {metrics['roc_auc']:.2f}, ECE {metrics['ece']:.2f})")
        for b in bins:
            ax.annotate(str(b["count"]), (b["predicted"], b["observed"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "skipped:\n" + metrics.get("reason", "")[:80], ha="center", va="center", wrap=True, fontsize=8)
    ax.set_xlabel("predicted P(correct)")
    ax.set_ylabel("observed share correct")
    ax.set_title("Learned reward: calibration (held out)")
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
