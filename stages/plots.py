"""plots: accuracy per variant (base vs fine-tuned) for `dvc plots` and as PNG; training curves PNG."""

from mcgrpo import paths
from mcgrpo.errors import run_stage
from mcgrpo.fileio import read_json
from mcgrpo.plots import accuracy_rows, plot_accuracy, plot_training, write_accuracy_csv


def main():
    rows = accuracy_rows(read_json(paths.BASELINE_METRICS), read_json(paths.FINETUNED_METRICS))
    write_accuracy_csv(paths.ACCURACY_TABLE, rows)
    plot_accuracy(paths.ACCURACY_PNG, rows)
    curves = plot_training(paths.TRAINING_PNG, paths.TRAIN_LOGS)
    print(f"wrote {paths.ACCURACY_TABLE}, {paths.ACCURACY_PNG}, {paths.TRAINING_PNG} ({', '.join(curves)})")


if __name__ == "__main__":
    run_stage(main)
