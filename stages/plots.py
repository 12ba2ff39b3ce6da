"""plots: accuracy per variant and per source (base vs fine-tuned) for `dvc plots` and as PNGs; reward
distribution and training curves as PNGs."""

from mcgrpo import paths
from mcgrpo.errors import run_stage
from mcgrpo.fileio import read_jsonl
from mcgrpo.metrics import read_metrics
from mcgrpo.params import load_params
from mcgrpo.plots import (
    accuracy_rows,
    plot_accuracy,
    plot_by_source,
    plot_reward_distribution,
    plot_training,
    source_rows,
    write_csv,
)


def main():
    p = load_params()
    base, tuned = read_metrics(paths.BASELINE_METRICS), read_metrics(paths.FINETUNED_METRICS)
    rows = accuracy_rows(base, tuned)
    write_csv(paths.ACCURACY_TABLE, rows)
    plot_accuracy(paths.ACCURACY_PNG, rows)
    rows = source_rows(base, tuned)
    write_csv(paths.SOURCE_TABLE, rows)
    plot_by_source(paths.SOURCE_PNG, rows)
    plot_reward_distribution(paths.REWARDS_PNG, read_jsonl(paths.BASELINE_PREDICTIONS),
                             read_jsonl(paths.FINETUNED_PREDICTIONS), p.train.variant, p.train.rule_reward_weights)
    curves = plot_training(paths.TRAINING_PNG, paths.TRAIN_LOGS)
    print(f"wrote {paths.PLOTS}/ (training curves: {', '.join(curves) or 'none'})")


if __name__ == "__main__":
    run_stage(main)
