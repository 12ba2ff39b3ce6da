"""The real `dvc repro` of the real dvc.yaml on the tiny model, in a scratch git repo."""

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mcgrpo.demo import run, setup_demo
from mcgrpo.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STAGES = ["prepare", "baseline", "reward_model", "train", "evaluate", "plots", "report", "publish"]


def repro(repo, *targets) -> tuple[list[str], str]:
    out = run(["dvc", "repro", *targets], repo, capture=True)
    return re.findall(r"Running stage '(\w+)'", out.stdout), out.stdout


def set_param(repo, section, key, value):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


FAKE_TOKEN = "hf_FAKEtokenThatMustNeverBeWritten0123456789"
FIRST_RUN = {}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = setup_demo(ROOT, tmp_path_factory.mktemp("pipeline") / "demo")
    os.environ["HF_TOKEN"] = FAKE_TOKEN  # as a user with a Hub login would have it
    try:
        ran, FIRST_RUN["stdout"] = repro(repo)
    finally:
        del os.environ["HF_TOKEN"]
    assert ran == STAGES
    return repo


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_the_token_is_never_written_or_printed(repo):
    assert FAKE_TOKEN not in FIRST_RUN["stdout"]
    leaked = [p for p in repo.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_outputs(repo):
    for path in ["data/prepared/train.jsonl", "data/prepared/eval.jsonl", "data/prepared/stats.json",
                 "data/predictions/baseline.jsonl", "data/predictions/finetuned.jsonl",
                 "models/adapter/adapter_config.json", "metrics/baseline.json", "metrics/finetuned.json",
                 "metrics/comparison.json", "metrics/train.json", "plots/accuracy.csv", "plots/accuracy.png",
                 "plots/accuracy_by_source.csv", "plots/accuracy_by_source.png", "plots/rewards.png",
                 "plots/training.png", "reports/report.md", "results/train/plots/metrics/reward.tsv",
                 "models/reward_model.joblib", "data/predictions/reward_model.jsonl", "metrics/reward_model.json",
                 "plots/reward_calibration.csv", "plots/reward_calibration.png", "models/publish/README.md",
                 "models/publish/adapter_model.safetensors"]:
        assert (repo / path).exists(), path
    base, tuned = (read_metrics(repo / f"metrics/{m}.json") for m in ("baseline", "finetuned"))
    assert set(base) == set(tuned) == {"direct", "cot", "loglik"}
    assert base["cot"].keys() == tuned["cot"].keys() and base["cot"]["n"] == 24
    stats = json.loads((repo / "data/prepared/stats.json").read_text())
    assert stats["train"]["n"] == 48 and stats["eval"]["n"] == 24
    prediction = json.loads((repo / "data/predictions/baseline.jsonl").read_text().splitlines()[0])
    assert {"id", "variant", "completion", "pred", "correct", "n_tokens"} <= set(prediction)
    assert json.loads((repo / "metrics/train.json").read_text())["steps"] == 6
    report = (repo / "reports/report.md").read_text()
    for heading in ["## Dataset", "## Prompts", "## Reward", "## Training configuration", "## Results",
                    "### Learned reward model", "## Insights", "## Examples", "## Limitations"]:
        assert heading in report
    comparison = read_metrics(repo / "metrics/comparison.json")
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
    assert ran == ["baseline", "evaluate", "plots", "report", "publish"]  # the model card quotes the metrics


def test_train_params_rerun_training_only_hybrid_reward_and_metrics_diff(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "first run"], repo)
    rm = json.loads((repo / "metrics/reward_model.json").read_text())
    # The warm-started tiny model gets some answers right and some wrong: a real, if weak, classifier.
    assert rm["skipped"] is False and 0 <= rm["roc_auc"] <= 1 and rm["n_examples"] == 96
    set_param(repo, "train", "learning_rate", "1e-05")  # the string `dvc exp run -S` would write
    # hybrid: the learned reward, and the base model's own log-likelihood choice
    set_param(repo, "train", "reward_weights", {"correct": 1.0, "format": 0.2, "learned": 0.3, "base_choice": 0.5})
    ran, _ = repro(repo)
    assert ran[0] == "train" and not {"prepare", "baseline", "reward_model"} & set(ran)
    assert ran[-2:] == ["report", "publish"]
    assert (repo / "results/train/plots/metrics/rewards/learned/mean.tsv").exists()
    assert (repo / "results/train/plots/metrics/rewards/base_choice_reward/mean.tsv").exists()
    assert 0 <= json.loads((repo / "metrics/train.json").read_text())["base_choice_accuracy"] <= 1
    assert "Training used it with weight 0.3" in (repo / "reports/report.md").read_text()
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "--all"], repo, capture=True).stdout)
    assert "metrics/finetuned.json" in diff and "cot.accuracy" in diff["metrics/finetuned.json"]
    assert diff["metrics/train.json"]["steps"]["new"] == 6


def test_same_params_give_identical_results(repo):
    outputs = ["data/prepared/eval.jsonl", "data/predictions/baseline.jsonl", "metrics/baseline.json",
               "models/adapter", "data/predictions/finetuned.jsonl", "metrics/finetuned.json"]
    before = {o: digest(repo / o) for o in outputs}
    shutil.rmtree(repo / "models/checkpoints")  # train from scratch, not by resuming the finished run
    run(["dvc", "repro", "--force", "baseline", "evaluate"], repo, capture=True)  # prepare, train and both evals
    assert {o: digest(repo / o) for o in outputs} == before
    run(["dvc", "repro"], repo, capture=True)  # train.json's runtime changed: let the report catch up


def test_bad_params_fail_with_a_clear_message(repo):
    set_param(repo, "train", "learnin_rate", 0.1)
    proc = run(["dvc", "repro", "train"], repo, check=False, capture=True)
    assert proc.returncode != 0
    assert "did you mean 'learning_rate'" in proc.stdout + proc.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["train"]["learnin_rate"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_pull_request_report(repo):
    """What the PR workflow posts: metrics and params diffs against the base, and the accuracy plot."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "base"], repo)
    set_param(repo, "report", "n_examples", 1)  # reruns the report only: a cheap change to review
    repro(repo)
    metrics = json.loads((repo / "metrics/finetuned.json").read_text())
    metrics["cot"]["accuracy"] += 0.5  # as if training had helped, so there is a metric change to show
    (repo / "metrics/finetuned.json").write_text(json.dumps(metrics))
    out = run(["bash", str(ROOT / ".ci/pr_report.sh"), "HEAD"], repo, capture=True).stdout
    assert "## DVC metrics: this branch vs `HEAD`" in out
    assert re.search(r"\| metrics/finetuned.json +\| cot.accuracy +\| [0-9.]+ +\| [0-9.]+ +\| 0.5 +\|", out), out
    assert re.search(r"\| params.yaml +\| report.n_examples +\| 3 +\| 1 +\|", out), out
    assert "![accuracy per prompt variant](./plots/accuracy.png)" in out
    assert not (repo / "plots/.gitignore").exists() or "accuracy.png" not in (repo / "plots/.gitignore").read_text()
    workflow = yaml.safe_load((ROOT / ".github/workflows/pr-review.yml").read_text())
    steps = " ".join(str(step.get("run", step.get("uses"))) for step in workflow["jobs"]["dvc-report"]["steps"])
    assert ".ci/pr_report.sh" in steps and "cml comment" in steps and "iterative/setup-cml" in steps
    run(["git", "checkout", "-q", "--", "params.yaml", "metrics/finetuned.json"], repo)
    repro(repo)


def test_experiment_grid_promotion_and_remote(repo, tmp_path):
    """The README's recipes: a queued grid, promoting the best experiment, and a DVC remote."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "before the grid"], repo)
    run(["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=choice(0.001,0.0001)", "-S", "train.max_steps=1"],
        repo)
    run(["dvc", "queue", "start", "--jobs", "1"], repo, capture=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo, capture=True).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    table = run(["dvc", "exp", "show", "--md"], repo, capture=True).stdout
    assert "train.learning_rate" in table and "cot.accuracy" in table
    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo, capture=True).stdout)))
    assert {r["train.learning_rate"] for r in rows if r["Experiment"]} == {"0.001", "0.0001"}
    exps = json.loads(run(["dvc", "exp", "show", "--json"], repo, capture=True).stdout)
    names = [e["name"] for ref in exps for e in ref.get("experiments") or [] if e.get("name")]
    assert len(names) == 2
    # promote one: apply it to the workspace and commit it
    run(["dvc", "exp", "apply", names[0]], repo, capture=True)
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["max_steps"] == 1
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", f"promote {names[0]}"], repo)
    assert run(["dvc", "status"], repo, capture=True).stdout.strip().endswith("Data and pipelines are up to date.")
    # a DVC remote in a local folder: push, lose the cache and the outputs, pull them back
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    run(["dvc", "push", "-q"], repo)
    adapter = digest(repo / "models/adapter")
    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / "models/adapter")
    run(["dvc", "pull", "-q"], repo)
    assert digest(repo / "models/adapter") == adapter
    assert "up to date" in run(["dvc", "status"], repo, capture=True).stdout


def test_killed_training_resumes_on_the_next_repro(tmp_path):
    overrides = {"train": {"max_steps": 24, "save_steps": 4, "max_completion_length": 16}}
    repo = setup_demo(ROOT, tmp_path / "demo", overrides=overrides, warm_start_steps=0)  # speed: no warm start
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = repo / "models/checkpoints/checkpoint-4/trainer_state.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training process with it, mid-run
    proc.wait()
    assert first.exists() and not (repo / "metrics/train.json").exists(), "training finished before the kill"
    ran, out = repro(repo, "train")  # the rerun a user would type; the stages after train are tested above
    assert "train" in ran and "resuming from models/checkpoints/checkpoint-" in out
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["steps"] == 24 and summary["resumed_from_step"] >= 4
    with open(repo / "results/train/plots/metrics/reward.tsv") as f:
        steps = [int(line.split("\t")[0]) for line in f.readlines()[1:]]
    assert steps == list(range(1, 25))  # one curve, no gap and no repeated steps across the kill
    # The random-init model never answers right: the reward model stage says so instead of crashing.
    rm = json.loads((repo / "metrics/reward_model.json").read_text())
    assert rm["skipped"] is True and "labelled completions are wrong" in rm["reason"]
