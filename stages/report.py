"""report: reports/report.md from the prepared data, metrics, predictions and plots."""

import yaml

from mcgrpo import paths
from mcgrpo.errors import run_stage
from mcgrpo.fileio import read_json, read_jsonl, write_text
from mcgrpo.metrics import read_metrics
from mcgrpo.params import load_params
from mcgrpo.report import build_report


def lock_hashes() -> dict:
    """md5 of the adapter and the prepared data as dvc.lock records them (written before this stage runs)."""
    try:
        lock = yaml.safe_load(open("dvc.lock")) or {}
    except FileNotFoundError:
        return {}
    wanted = {str(paths.ADAPTER), str(paths.TRAIN_SET), str(paths.EVAL_SET)}
    return {o["path"]: o["md5"] for stage in lock.get("stages", {}).values() for o in stage.get("outs", [])
            if o["path"] in wanted}


def main():
    p = load_params()
    report = build_report(
        params=p, stats=read_json(paths.DATA_STATS), base_metrics=read_metrics(paths.BASELINE_METRICS),
        tuned_metrics=read_metrics(paths.FINETUNED_METRICS), comparison=read_metrics(paths.COMPARISON),
        train_metrics=read_json(paths.TRAIN_METRICS), records=read_jsonl(paths.EVAL_SET),
        base_rows=read_jsonl(paths.BASELINE_PREDICTIONS), tuned_rows=read_jsonl(paths.FINETUNED_PREDICTIONS),
        lock_hashes=lock_hashes(), reward_model_metrics=read_json(paths.REWARD_MODEL_METRICS),
        # relative to reports/, so the images render on GitHub
        plot_paths={name: f"../{path}" for name, path in (
            ("accuracy per variant", paths.ACCURACY_PNG), ("accuracy by source", paths.SOURCE_PNG),
            ("reward distribution", paths.REWARDS_PNG), ("training curves", paths.TRAINING_PNG),
            ("learned reward calibration", paths.REWARD_CALIBRATION_PNG))})
    write_text(paths.REPORT, report)
    print(f"wrote {paths.REPORT}")


if __name__ == "__main__":
    run_stage(main)
