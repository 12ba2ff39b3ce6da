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


def command(script: str, *args) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)]


def run_all(commands: dict) -> None:
    """Run the scripts side by side (each spends most of its time importing torch on one core) and check each
    exited 0, showing the failures' output."""
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, cmd in commands.items()}
    failed = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        if proc.returncode:
            failed[name] = output[-3000:]
    assert not failed, failed


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "questions.jsonl"
    write_jsonl(path, [{**r, "source": "synthetic"} for r in make_synthetic_mc(80, seed=0)])
    return path


def test_decode_and_training_scripts(tmp_path, questions):
    out = tmp_path
    run_all({
        "generation": command("generation.py", "--preset", "tiny", "--batch", 2, "--prompt", 8, "--new", 4,
                              "--repeats", 1, "--engines",
                              "hf_dynamic,hf_static,static_generator,static_generator_sampling,"
                              "static_generator_unfused,static_generator_flex",
                              "--out", out / "generation.json"),
        "decode_variants": command("decode_variants.py", "--preset", "tiny", "--batch", 2, "--prompt", 8, "--new", 16,
                                   "--profile-steps", 2, "--variants", "grouped,grouped_sdpa,unfused,flex",
                                   "--out", out / "variants.json"),
        "profile_decode": command("profile_decode.py", "--preset", "tiny", "--batch", 2, "--prompt", 8, "--steps", 2,
                                  "--out", out / "profile.txt"),
        "stage_decode": command("stage_decode.py", "--race", questions, "--tokenizer-texts", questions, "--preset", "tiny",
                                "--batch", 4, "--new", 40, "--loglik", 4, "--eval-prompts", 6, "--cudnn", "off",
                                "--out", out / "stage.json"),
        "make_race_sample": command("make_race_sample.py", race_tarball(tmp_path / "RACE.tar.gz"), out / "sample.jsonl",
                                    "--n", 5),
        "grpo_step": command("grpo_step.py", "--race", questions, "--preset", "tiny", "--steps", 2, "--warmup", 1,
                             "--prompts", 2, "--generations", 2, "--new", 4, "--micro-batch", 2,
                             "--set", "train.variant=completion_direct", "--set", "train.reward_weights.format=0",
                             "--paths", "pipeline,pipeline_lora_rollouts,pipeline_cudnn,trl_defaults", "--profile",
                             "--out", out / "grpo_step.json"),
        "sdpa_padding": command("sdpa_padding.py", "--batch", 2, "--heads", 2, "--head-dim", 16, "--lengths", "64,70",
                                "--max-pad", 20, "--window", 16, "--repeats", 2, "--out", out / "sdpa_padding.json"),
        "learnability": command("learnability.py", "--preset", "tiny", "--steps", 2, "--prompts", 2, "--completion-tokens", 4,
                                "--warm-start-steps", 2, "--out", out / "learnability", "--work", tmp_path / "work"),
    })
    generation = json.loads((out / "generation.json").read_text())
    engines = generation["engines"]
    assert set(engines) == {"hf_dynamic", "hf_static", "static_generator", "static_generator_sampling",
                            "static_generator_unfused", "static_generator_flex"}
    assert engines["static_generator"]["new_tok_per_s"] > 0
    assert set(generation["greedy_vs_hf"]) == {"static_generator", "static_generator_unfused", "static_generator_flex"}
    variants = json.loads((out / "variants.json").read_text())["variants"]
    assert set(variants) == {"grouped", "grouped_sdpa", "unfused", "flex"}
    assert variants["grouped"]["replay_only_ms"] is None  # no graph on CPU
    assert variants["grouped"]["profile"]["top"]
    assert "Self CPU time total" in (out / "profile.txt").read_text()
    stage = json.loads((out / "stage.json").read_text())
    assert stage["batch"] == 4 and stage["models"] and stage["cudnn"] == "off"
    assert [run["prompts"] for run in stage["eval_generate"].values()] == [6, 6]
    rows = [json.loads(line) for line in (out / "sample.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {"context", "question", "options", "answer"} <= set(rows[0])
    cases = json.loads((out / "sdpa_padding.json").read_text())["cases"]  # math only on a CPU
    assert len(cases) == 12 and {c["padding"] for c in cases} == {"none", "some", "all"}
    # the math backend gives padding queries (which mask every key) no NaN: the reference for the GPU's backends
    assert not any(c["nan_output"] or any(c["nan_grads"].values()) for c in cases)
    assert all(c["first_call_s"] > 0 and c["median_later_s"] > 0 for c in cases)
    step = json.loads((out / "grpo_step.json").read_text())
    assert set(step["paths"]) == {"pipeline", "pipeline_lora_rollouts", "pipeline_cudnn", "trl_defaults"}
    assert step["variant"] == "completion_direct"
    assert not step["paths"]["pipeline"]["cudnn_attention"] and step["paths"]["pipeline_cudnn"]["cudnn_attention"]
    assert step["paths"]["pipeline"]["pad_to_multiple_of"] == 64
    assert step["paths"]["pipeline_cudnn"]["pad_to_multiple_of"] is None
    assert step["paths"]["pipeline"]["merged_rollouts"] and not step["paths"]["pipeline_lora_rollouts"]["merged_rollouts"]
    assert step["paths"]["pipeline"]["compiled_layers"] is False  # auto: compiled on CUDA only
    assert step["reward_weights"]["format"] == 0  # a nested --set reached the params
    for path in step["paths"].values():
        assert len(path["step_s"]) == 2 and path["completions_per_s"] > 0
        assert set(path["step_phases_s_after_warmup"]) == {"rollouts", "rewards_and_reference", "policy_forward_backward",
                                                     "optimizer"}
        assert len(path["step_phases_s"]) == 2 and path["peak_rises"] == []  # GPU memory: none on CPU
    assert step["paths"]["pipeline"]["rollout_engine"] == "fast" and step["speedup_vs_trl_defaults"] > 0
    profiled = step["paths"]["pipeline"]["profiled_step"]  # a third step, left out of step_s
    assert profiled["wall_s"] > 0 and profiled["top_host_ops"] and "profiled_step" not in step["paths"]["trl_defaults"]
    learn = json.loads((out / "learnability" / "learnability.json").read_text())
    assert learn["preset"] == "tiny" and (out / "learnability" / "reward_curve.csv").read_text().startswith("step,reward\n")


def test_real_scale(tmp_path, questions):
    out = tmp_path / "real_scale"
    small = ["eval.max_new_tokens=4", "eval.batch_size=4", "train.max_completion_length=4",
             "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=1", "train.num_generations=4",
             "eval.variants=[direct]", "eval.mode=generate"]
    run_all({"real_scale": command("real_scale.py", "--race", questions, "--preset", "tiny", "--n-eval", 4, "--steps", 1,
                                   "--stages", "prepare,train", "--work", tmp_path / "work" / "project", "--out", out,
                                   *[a for s in small for a in ("--set", s)])})
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["stage_seconds"]) == {"prepare", "train"}  # baseline and evaluate: tests/test_pipeline.py
    assert json.loads((out / "train.json").read_text())["steps"] == 1


def test_reading_ablation(tmp_path, questions, tiny_model_dir):
    """With and without the article on the same questions, and a clear error when there is no article to remove."""
    out = tmp_path / "reading.json"
    # --listed a second time on the same questions with every option list rotated by one (the answers follow): the
    # rotation-averaged score sees the same rotations, so it must choose the same options.
    from mcgrpo.training import with_options_permuted

    records = [json.loads(line) for line in open(questions)]
    rotated = tmp_path / "rotated.jsonl"
    write_jsonl(rotated, [with_options_permuted(r, [1, 2, 3, 0]) for r in records])
    out_rotated = tmp_path / "reading_rotated.json"
    run_all({"reading": command("reading_ablation.py", "--model", tiny_model_dir, "--questions", questions, "--n", 6,
                                "--out", out, "--listed", "--own-line", "--line-tokens", 4),
             "rotated": command("reading_ablation.py", "--model", tiny_model_dir, "--questions", rotated, "--n", 6,
                                "--out", out_rotated, "--listed")})
    result = json.loads(out.read_text())
    assert result["n"] == 6 and set(result) >= {"with_article", "without_article", "reading_gain", "listed"}
    assert result["reading_gain"] == round(result["with_article"]["accuracy"] - result["without_article"]["accuracy"], 4)
    assert sum(result["gold_letters"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result["best_position_only_accuracy"] == max(result["gold_letters"].values())
    listed, listed_rotated = result["listed"], json.loads(out_rotated.read_text())["listed"]
    assert sum(listed["highest_by_displayed_position"].values()) == pytest.approx(1.0, abs=1e-3)
    assert listed["rotations_averaged"] == listed_rotated["rotations_averaged"]
    assert listed["highest_by_displayed_position"] == listed_rotated["highest_by_displayed_position"]
    # --own-line: the two subsets split the sample, and each subset's plain accuracy is the with-article rows'
    own = result["own_line"]
    named, unnamed = own["named_one"], own["named_none_or_several"]
    assert named["after_line"]["n"] + unnamed["after_line"]["n"] == 6 == named["plain"]["n"] + unnamed["plain"]["n"]
    assert own["named_one_rate"] == round(named["after_line"]["n"] / 6, 4)
    plain_right = sum((sub["plain"]["accuracy"] or 0) * sub["plain"]["n"] for sub in (named, unnamed))
    assert plain_right == pytest.approx(result["with_article"]["accuracy"] * 6, abs=1e-3)
    assert 0 <= own["accuracy"] <= 1
    assert own["minus_plain"] == round(own["accuracy"] - result["with_article"]["accuracy"], 4)
    no_passage = tmp_path / "no_passage.jsonl"
    write_jsonl(no_passage, [{**r, "context": ""} for r in make_synthetic_mc(4, seed=1)])
    failed = subprocess.run(command("reading_ablation.py", "--model", tiny_model_dir, "--questions", no_passage,
                                    "--out", tmp_path / "x.json"), capture_output=True, text=True)
    assert failed.returncode == 2 and "no record has a passage" in failed.stderr and not (tmp_path / "x.json").exists()


def test_base_variants(tmp_path, questions, tiny_model_dir):
    """Each shot count answers the same sample under each variant; shots without a train file are refused."""
    out = tmp_path / "base_variants.json"
    run_all({"base_variants": command("base_variants.py", "--model", tiny_model_dir, "--questions", questions,
                                      "--train", questions, "--n", 4, "--shots", "0,2", "--max-new-tokens", 4,
                                      "--out", out)})
    result = json.loads(out.read_text())
    assert set(result["by_shots"]) == {"0", "2"} and result["n"] == 4
    assert result["by_shots"]["0"]["shot_ids"] == [] and len(result["by_shots"]["2"]["shot_ids"]) == 2
    for by in result["by_shots"].values():
        assert set(by["variants"]) == {"completion_option", "completion_direct"}
        assert 0 <= by["variants"]["completion_option"]["accuracy"] <= 1
    failed = subprocess.run(command("base_variants.py", "--model", tiny_model_dir, "--questions", questions,
                                    "--shots", "3", "--out", tmp_path / "x.json"), capture_output=True, text=True)
    assert failed.returncode == 2 and "give --train" in failed.stderr and not (tmp_path / "x.json").exists()


def test_rejudge_reads_saved_predictions_the_current_way(tmp_path):
    # a line naming every candidate was an answer under the old F1 reading; the current reading refuses it
    options = ["Kim", "Kate", "Lily", "Lucy"]
    row = {"variant": "completion_open", "answer": "A", "n_options": 4, "options": options, "finished": True,
           "n_tokens": 4, "reasoning_words": 0, "source": "race", "kind": "wh"}
    base = [{**row, "id": "q1", "completion": "It is Kim's."}, {**row, "id": "q2", "completion": "a red one"}]
    tuned = [{**row, "id": "q1", "completion": "Kim. Kate. Lily. Lucy."}, {**row, "id": "q2", "completion": "Kim's"}]
    write_jsonl(tmp_path / "base.jsonl", base + [{**row, "variant": "loglik", "id": "q1", "completion": ""}])
    write_jsonl(tmp_path / "tuned.jsonl", tuned)
    out = tmp_path / "rejudged.json"
    subprocess.run(command("rejudge.py", "--variant", "completion_open", "--base", tmp_path / "base.jsonl",
                           "--tuned", tmp_path / "tuned.jsonl", "--out", out), cwd=ROOT, check=True)
    result = json.loads(out.read_text())
    assert result["base"]["accuracy"] == 0.5 and result["base"]["answered_rate"] == 0.5  # the loglik row is left out
    assert result["base"]["lines_touching_2_or_more_options"] == 0
    assert result["tuned"]["accuracy"] == 0.5 and result["tuned"]["lines_touching_2_or_more_options"] == 0.5
    assert result["tuned"]["mcnemar"] == {"fixed": 1, "broken": 1, "p_value": 1.0} and result["tuned"]["change"] == 0
    assert "peer" not in result
    # length: the tuned q2 answer "Kim's" is Kim, the shortest option; q1 is no answer
    assert result["tuned"]["answers_the_shortest_option"] == 0.5 and result["tuned"]["answers_the_longest_option"] == 0
    assert result["always_the_longest_option_accuracy"] == 0  # Kate, Lily and Lucy tie; the first, B, is wrong
    bad = subprocess.run(command("rejudge.py", "--variant", "completion_option", "--base", tmp_path / "base.jsonl",
                                 "--tuned", tmp_path / "tuned.jsonl", "--out", out), cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "no completion_option rows" in bad.stderr
