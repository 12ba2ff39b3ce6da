"""Every benchmark script runs end to end on a CPU at the tiny preset, so a refactor cannot break one silently.

These check that each script runs and writes what it says, not its figures (those come from GPU runs:
benchmarks/README.md). real_270m.sh, trl_peer.py and best_dev_run.py run in tests/test_real_run_script.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_real_run_script import race_tarball

from mcgrpo.data.synthetic import make_synthetic_mc
from mcgrpo.fileio import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def bench(script: str, *args, cwd=ROOT) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "questions.jsonl"
    write_jsonl(path, [{**r, "source": "synthetic"} for r in make_synthetic_mc(80, seed=0)])
    return path


def test_generation(tmp_path):
    out = tmp_path / "generation.json"
    bench("generation.py", "--preset", "tiny", "--batch", 2, "--prompt", 8, "--new", 4, "--repeats", 1,
          "--engines", "hf_dynamic,hf_static,static_generator,static_generator_sampling", "--out", out)
    result = json.loads(out.read_text())
    assert set(result["engines"]) == {"hf_dynamic", "hf_static", "static_generator", "static_generator_sampling"}
    assert result["engines"]["static_generator"]["new_tok_per_s"] > 0


def test_decode_variants(tmp_path):
    out = tmp_path / "variants.json"
    bench("decode_variants.py", "--preset", "tiny", "--batch", 2, "--prompt", 8, "--new", 16, "--profile-steps", 2,
          "--variants", "grouped,grouped_sdpa", "--out", out)
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"grouped", "grouped_sdpa"} and variants["grouped"]["replay_only_ms"] is None  # no graph on CPU
    assert variants["grouped"]["profile"]["top"]


def test_profile_decode(tmp_path):
    out = tmp_path / "profile.txt"
    bench("profile_decode.py", "--preset", "tiny", "--batch", 2, "--prompt", 8, "--steps", 2, "--out", out)
    assert "Self CPU time total" in out.read_text()


def test_stage_decode(tmp_path, questions):
    out = tmp_path / "stage.json"
    bench("stage_decode.py", "--race", questions, "--tokenizer-texts", questions, "--preset", "tiny", "--batch", 4,
          "--new", 40, "--loglik", 4, "--out", out)
    result = json.loads(out.read_text())
    assert result["batch"] == 4 and result["models"]


def test_make_race_sample(tmp_path):
    out = tmp_path / "sample.jsonl"
    bench("make_race_sample.py", race_tarball(tmp_path / "RACE.tar.gz"), out, "--n", 5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {"context", "question", "options", "answer"} <= set(rows[0])


def test_learnability(tmp_path):
    out = tmp_path / "learnability"
    bench("learnability.py", "--preset", "tiny", "--steps", 2, "--prompts", 2, "--completion-tokens", 4,
          "--warm-start-steps", 2, "--out", out, "--work", tmp_path / "work")
    result = json.loads((out / "learnability.json").read_text())
    assert result["preset"] == "tiny" and (out / "reward_curve.csv").read_text().startswith("step,reward\n")


def test_real_scale(tmp_path, questions):
    out = tmp_path / "real_scale"
    small = ["eval.max_new_tokens=4", "eval.batch_size=4", "train.max_completion_length=4",
             "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=1", "train.num_generations=4",
             "eval.variants=[direct]", "eval.mode=generate"]
    bench("real_scale.py", "--race", questions, "--preset", "tiny", "--n-eval", 4, "--steps", 1,
          "--work", tmp_path / "work" / "project", "--out", out, *[a for s in small for a in ("--set", s)])
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["stage_seconds"]) == {"prepare", "baseline", "train", "evaluate"}
    assert json.loads((out / "train.json").read_text())["steps"] == 1
