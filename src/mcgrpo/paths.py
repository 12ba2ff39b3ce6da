"""Where each stage reads and writes; dvc.yaml declares the same paths."""

from pathlib import Path

PREPARED = Path("data/prepared")
TRAIN_SET, EVAL_SET, DATA_STATS = PREPARED / "train.jsonl", PREPARED / "eval.jsonl", PREPARED / "stats.json"
SHOTS = PREPARED / "shots.jsonl"  # solved examples for completion prompts (prepare.n_shots; empty when 0)
PREDICTIONS = Path("data/predictions")
BASELINE_PREDICTIONS, FINETUNED_PREDICTIONS = PREDICTIONS / "baseline.jsonl", PREDICTIONS / "finetuned.jsonl"
ADAPTER, CHECKPOINTS = Path("models/adapter"), Path("models/checkpoints")
REWARD_MODEL, REWARD_DATA = Path("models/reward_model.joblib"), PREDICTIONS / "reward_model.jsonl"
TRAIN_LOGS = Path("results/train")  # dvclive: plots/metrics/**.tsv, metrics.json
METRICS = Path("metrics")
BASELINE_METRICS, FINETUNED_METRICS = METRICS / "baseline.json", METRICS / "finetuned.json"
COMPARISON, TRAIN_METRICS = METRICS / "comparison.json", METRICS / "train.json"
REWARD_MODEL_METRICS = METRICS / "reward_model.json"


def breakdown_of(metrics_file) -> Path:
    """metrics/baseline.json -> metrics/breakdowns/baseline.json: the rest of a model metrics file (counts,
    breakdowns by source, kind and letter), git-tracked but not a dvc metric."""
    metrics_file = Path(metrics_file)
    return metrics_file.parent / "breakdowns" / metrics_file.name
PLOTS = Path("plots")
ACCURACY_TABLE, ACCURACY_PNG, TRAINING_PNG = PLOTS / "accuracy.csv", PLOTS / "accuracy.png", PLOTS / "training.png"
SOURCE_TABLE, SOURCE_PNG, REWARDS_PNG = PLOTS / "accuracy_by_source.csv", PLOTS / "accuracy_by_source.png", PLOTS / "rewards.png"
REWARD_CALIBRATION_TABLE, REWARD_CALIBRATION_PNG = PLOTS / "reward_calibration.csv", PLOTS / "reward_calibration.png"
REPORT = Path("reports/report.md")
PUBLISH = Path("models/publish")
