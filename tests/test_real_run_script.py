"""benchmarks/real_270m.sh on the tiny model and a tiny RACE tarball: the dev queue, the choice made on dev,
the chosen experiment moved to test with its adapter kept, then the peer (a CPU smoke run)."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mcgrpo.demo import TINY_MODEL, setup_demo
from mcgrpo.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def race_tarball(path: Path) -> Path:
    """A RACE.tar.gz in the CMU layout: four questions per passage file, in train, dev and test."""
    root = path.parent / "race_src"
    for split, n_files in (("train", 6), ("dev", 4), ("test", 4)):
        for level in ("high", "middle"):
            d = root / "RACE" / split / level
            d.mkdir(parents=True)
            for i in range(n_files):
                passage = {"article": f"{split} {level} story {i}: Tom went to the school by the park.",
                           "id": f"{i}.txt",
                           "questions": ["Where did Tom go?", "Tom went to _ .", "What was near?", "Who went?"],
                           "options": [["home", "school", "park", "shop"]] * 3 + [["Tom", "Ann", "Bob", "Sue"]],
                           "answers": ["B", "B", "C", "A"]}
                (d / f"{i}.txt").write_text(json.dumps(passage))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / "RACE", arcname="RACE")
    return path


SMALL = ("-S prepare.n_train=8 -S prepare.n_eval=8 -S train.max_steps=2 -S train.per_device_train_batch_size=4 "
         "-S train.gradient_accumulation_steps=1 -S train.num_generations=4 -S eval.batch_size=8 "
         "-S eval.max_new_tokens=8 -S reward_model.n_questions=4 -S reward_model.max_new_tokens=8 "
         "-S reward_model.batch_size=8 -S train.save_steps=1")


def test_dev_choice_moves_to_test_with_its_adapter(tmp_path):
    repo = setup_demo(ROOT, tmp_path / "repo", warm_start_steps=0)
    race, out = race_tarball(tmp_path / "RACE.tar.gz"), tmp_path / "out"
    env = {**os.environ, "REAL_RUN_EXTRA": SMALL, "REAL_RUN_JOBS": "2", "REAL_RUN_DTYPE": "float32",
           "REAL_RUN_DEV": ("train.learning_rate=0.0001 train.option_order=per_completion train.reward_weights.base_choice=1;"
                            "train.learning_rate=0.001 train.beta=0.04 train.reward_weights.base_choice=1"),
           "REAL_RUN_PEERS": "defaults base_choice constrained",  # the LoRA peer is the same script with two more flags
           "REAL_RUN_TEST_VARIANTS": "completion_pick,completion_open",  # the default trains completion_pick
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ROOT / "benchmarks/real_270m.sh"), str(repo / TINY_MODEL), str(race), str(out)],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "best dev experiment: dev-" in run.stdout
    test_log = (out / "test_run.log").read_text()
    # The chosen dev experiment's adapter is the one evaluated on test: no second training run.
    assert "Stage 'train' didn't change" in test_log and "Running stage 'train'" not in test_log
    assert "Running stage 'evaluate'" in test_log
    comparison = read_metrics(repo / "metrics/comparison.json")
    assert {"completion_pick", "completion_open", "loglik"} == set(comparison)  # REAL_RUN_TEST_VARIANTS, loglik
    assert comparison["completion_pick"]["n_paired"] == 8  # the trained variant
    finetuned = read_metrics(repo / "metrics/finetuned.json")
    assert finetuned["completion_pick"]["format_rate"] == 1.0  # constrained: every answer is one option, whole
    stats = json.loads((repo / "data/prepared/stats.json").read_text())
    assert stats["eval"]["n"] == 8 and stats["train"]["n"] == 8
    metrics = json.loads((out / "peer_defaults" / "metrics.json").read_text())
    assert metrics["settings"]["max_steps"] == 2 and "completion_pick" in metrics["comparison"]
    assert "base_choice" not in metrics["settings"]["reward_names"]  # the plain peer: rules that score alone
    with_choice = json.loads((out / "peer_base_choice" / "metrics.json").read_text())
    assert "base_choice" in with_choice["settings"]["reward_names"] and "completion_pick" in with_choice["comparison"]
    constrained = json.loads((out / "peer_constrained" / "metrics.json").read_text())
    assert constrained["settings"]["pipeline_rollouts"] and not metrics["settings"]["pipeline_rollouts"]
    assert constrained["settings"]["learning_rate"] == metrics["settings"]["learning_rate"]  # TRL's default otherwise
    assert "completion_pick" in constrained["comparison"]
    assert not (out / "peer_lora").exists()  # REAL_RUN_PEERS chose which peers run
    for which in ("base", "tuned"):  # the reading check, both models, on the test run's questions
        reading = json.loads((out / f"reading_{which}.json").read_text())
        assert reading["n"] == 8 and "reading_gain" in reading
    assert json.loads((out / "reading_tuned.json").read_text())["adapter"] == "models/adapter"
    with tarfile.open(out / "results.tgz") as tar:
        assert {"metrics/comparison.json", "reports/report.md"} <= set(tar.getnames())



def test_only_dev_stops_after_the_choice_and_names_it(tmp_path):
    """REAL_RUN_ONLY_DEV: the dev queue runs and its choice is written for a later REAL_RUN_SETTING run; nothing
    touches the test set."""
    repo = setup_demo(ROOT, tmp_path / "repo", warm_start_steps=0)
    race, out = race_tarball(tmp_path / "RACE.tar.gz"), tmp_path / "out"
    setting = ("train.learning_rate=0.0001 train.option_order=per_completion train.reward_weights.format=0 "
               "train.reward_weights.base_choice=1")
    env = {**os.environ, "REAL_RUN_EXTRA": SMALL, "REAL_RUN_DTYPE": "float32", "REAL_RUN_DEV": setting,
           "REAL_RUN_ONLY_DEV": "1", "REAL_RUN_VARIANT": "completion_option", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ROOT / "benchmarks/real_270m.sh"), str(repo / TINY_MODEL), str(race), str(out)],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "chosen_setting.txt").read_text().strip() == setting
    assert "REAL_RUN_ONLY_DEV: stopping after dev" in run.stdout
    assert not (out / "test_run.log").exists() and not (out / "peer_defaults").exists()
    import yaml

    applied = yaml.safe_load((repo / "params.yaml").read_text())  # the dev experiment, applied to the workspace
    assert applied["prepare"]["eval_split"] == "dev" and applied["train"]["option_order"] == "per_completion"
    assert applied["train"]["variant"] == "completion_option" and applied["eval"]["variants"] == ["completion_option"]
    weights = applied["train"]["reward_weights"]  # a nested key set through -S
    assert weights["format"] == 0 and weights["correct"] == 1.0 and weights["base_choice"] == 1
    train = json.loads((repo / "metrics/train.json").read_text())  # the base model's choices were made and trained on
    assert train["steps"] == 2 and 0 <= train["base_choice_accuracy"] <= 1
