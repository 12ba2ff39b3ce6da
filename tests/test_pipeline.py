"""The real `dvc repro` of the real dvc.yaml on the tiny model, in a scratch git repo."""

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from mcgrpo.demo import run, setup_demo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STAGES = ["prepare", "baseline", "train", "evaluate", "plots", "report"]


def repro(repo) -> tuple[list[str], str]:
    out = run(["dvc", "repro"], repo, capture=True)
    return re.findall(r"Running stage '(\w+)'", out.stdout), out.stdout


def set_param(repo, section, key, value):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = setup_demo(ROOT, tmp_path_factory.mktemp("pipeline") / "demo")
    ran, _ = repro(repo)
    assert ran == STAGES
    return repo


def test_outputs(repo):
    for path in ["data/prepared/train.jsonl", "data/prepared/eval.jsonl", "data/prepared/stats.json",
                 "data/predictions/baseline.jsonl", "data/predictions/finetuned.jsonl",
                 "models/adapter/adapter_config.json", "metrics/baseline.json", "metrics/finetuned.json",
                 "metrics/comparison.json", "metrics/train.json", "plots/accuracy.csv", "plots/accuracy.png",
                 "plots/accuracy_by_source.csv", "plots/accuracy_by_source.png", "plots/rewards.png",
                 "plots/training.png", "reports/report.md", "results/train/plots/metrics/reward.tsv"]:
        assert (repo / path).exists(), path
    base, tuned = (json.loads((repo / f"metrics/{m}.json").read_text()) for m in ("baseline", "finetuned"))
    assert set(base) == set(tuned) == {"direct", "cot", "loglik"}
    assert base["cot"].keys() == tuned["cot"].keys() and base["cot"]["n"] == 24
    stats = json.loads((repo / "data/prepared/stats.json").read_text())
    assert stats["train"]["n"] == 48 and stats["eval"]["n"] == 24
    prediction = json.loads((repo / "data/predictions/baseline.jsonl").read_text().splitlines()[0])
    assert {"id", "variant", "completion", "pred", "correct", "n_tokens"} <= set(prediction)
    assert json.loads((repo / "metrics/train.json").read_text())["steps"] == 6
    report = (repo / "reports/report.md").read_text()
    for heading in ["## Dataset", "## Prompts", "## Reward", "## Training configuration", "## Results",
                    "## Insights", "## Examples", "## Limitations"]:
        assert heading in report
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    assert f"| loglik | {comparison['loglik']['base_accuracy']} |" in report  # numbers come from the metrics
    # metrics files are git-tracked (cache: false); the big outputs are DVC-cached
    ignored = (repo / "data/predictions/.gitignore").read_text()
    assert "/baseline.jsonl" in ignored and not (repo / "metrics/.gitignore").exists()


def test_second_repro_is_a_fast_no_op(repo):
    start = time.perf_counter()
    ran, out = repro(repo)
    elapsed = time.perf_counter() - start
    assert ran == [] and "didn't change" in out
    assert elapsed < 5, f"no-op repro took {elapsed:.1f}s"  # DVC's own start-up is most of it


def test_eval_param_reruns_no_training(repo):
    set_param(repo, "eval", "max_new_tokens", 12)
    ran, _ = repro(repo)
    assert ran == ["baseline", "evaluate", "plots", "report"]


def test_train_param_does_not_rerun_baseline_and_metrics_diff(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "first run"], repo)
    set_param(repo, "train", "learning_rate", "1e-05")  # the string `dvc exp run -S` would write
    ran, _ = repro(repo)
    assert ran == ["train", "evaluate", "plots", "report"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "--all"], repo, capture=True).stdout)
    assert "metrics/finetuned.json" in diff and "cot.accuracy" in diff["metrics/finetuned.json"]
    assert diff["metrics/train.json"]["steps"]["new"] == 6


def test_bad_params_fail_with_a_clear_message(repo):
    set_param(repo, "train", "learnin_rate", 0.1)
    proc = run(["dvc", "repro", "train"], repo, check=False, capture=True)
    assert proc.returncode != 0
    assert "did you mean 'learning_rate'" in proc.stdout + proc.stderr
