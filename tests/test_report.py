from mcgrpo.metrics import compare, summarize
from mcgrpo.params import Params
from mcgrpo.report import blind_ceiling_note, build_report, insights, position_warning, select_examples


def rec(i, context_len):
    return {"id": f"q{i}", "context": "x" * context_len, "question": f"Question {i}?", "options": ["a", "b", "c", "d"],
            "answer": "A", "source": "s"}


def pred(i, variant, correct, completion="..."):
    return {"id": f"q{i}", "variant": variant, "correct": correct, "pred": "A" if correct else "B", "format_ok": True,
            "n_tokens": 5, "answer": "A", "source": "s", "kind": "wh", "completion": completion, "reward": 1.0}


# q0..q3 fixed, q4..q5 broken, q6..q8 both wrong, q9 both right; context length decides the order
RECORDS = [rec(i, 100 - i) for i in range(10)]
BASE = [pred(i, "cot", i in (4, 5, 9), f"base says {i}") for i in range(10)]
TUNED = [pred(i, "cot", i in (0, 1, 2, 3, 9), f"tuned says {i}") for i in range(10)]


def test_select_examples_by_rule():
    chosen = select_examples(RECORDS, BASE, TUNED, "cot", n=3)
    ids = {kind: [r["id"] for r, _, _ in items] for kind, items in chosen.items()}
    # shortest passage first: q3 (97 chars) before q2 (98) ...
    assert ids == {"improved": ["q3", "q2", "q1"], "regressed": ["q5", "q4"], "both_wrong": ["q8", "q7", "q6"]}
    record, base, tuned = chosen["improved"][0]
    assert not base["correct"] and tuned["correct"] and record["id"] == base["id"] == tuned["id"]
    assert select_examples(RECORDS, BASE, TUNED, "direct", n=3) == {"improved": [], "regressed": [],
                                                                    "both_wrong": []}


def test_report_has_every_section_with_numbers_from_metrics():
    base_m, tuned_m, comparison = summarize(BASE), summarize(TUNED), compare(BASE, TUNED)
    stats = {role: {"n": 10, "dropped_too_long": 1, "by_source": {"s": 10}, "context_tokens": {"p50": 1, "p90": 2,
             "max": 3}, "answer_letters": {"A": 1.0}, "question_kinds": {"wh": 10}} for role in ("train", "eval")}
    stats["max_prompt_tokens"] = 1024
    train = {"backend": "transformers", "steps": 7, "reward_first": 0.1, "reward_last10": 0.6, "train_runtime_s": 3}
    report = build_report(params=Params(), stats=stats, base_metrics=base_m, tuned_metrics=tuned_m,
                          comparison=comparison, train_metrics=train, records=RECORDS, base_rows=BASE,
                          tuned_rows=TUNED, lock_hashes={"models/adapter": "abc123.dir"},
                          plot_paths={"accuracy per variant": "../plots/accuracy.png"})
    for heading in ["# GRPO fine-tuning of", "## Dataset", "## Prompts", "## Reward", "## Training configuration",
                    "## Results", "### By source", "### By question kind", "### Answer letters", "## Insights",
                    "## Examples", "## Limitations", "## Ideas"]:
        assert heading in report, heading
    c = comparison["cot"]
    assert f"| cot | {c['base_accuracy']} | {c['finetuned_accuracy']} |" in report  # 0.3 -> 0.5
    assert f"McNemar p = {c['p_value']:.3g}" in report
    assert "abc123.dir" in report and "![accuracy per variant](../plots/accuracy.png)" in report
    assert "tuned says 3" in report and "base says 5" in report  # example completions are quoted
    assert "https://huggingface.co/unsloth/gemma-3-1b-it" in report
    # each reward's whole first docstring paragraph, not a first line cut mid-sentence
    assert "completion_open: a line that names one option), else 0.0." in report
    assert "**last** declaration" in report and "restates" not in report
    assert "| option order | as in the data |" in report and "step time (mean of last 10)" not in report
    option_run = Params.model_validate({"train": {"variant": "completion_option", "option_order": "per_completion"}})
    phases = {"rollouts": 1.2, "rewards_and_reference": 0.3, "policy_forward_backward": 0.7, "optimizer": 0.05}
    option_report = build_report(params=option_run, stats=stats, base_metrics=base_m, tuned_metrics=tuned_m,
                                 comparison=comparison, train_metrics={**train, "step_time_s_last10": 2.2,
                                                                       "step_phases_s_last10": phases},
                                 records=RECORDS, base_rows=BASE, tuned_rows=TUNED, lock_hashes={}, plot_paths={})
    assert "the option the completion's first line restates" in option_report
    assert "options unlettered (`- ...`)" in option_report  # the trained variant's layout, in the prompt list
    assert "| option order | shuffled for each completion |" in option_report
    assert ("| step time (mean of last 10) | 2.2 s: rollouts 1.2 s, rewards and reference 0.3 s, policy forward "
            "backward 0.7 s, optimizer 0.05 s |") in option_report
    open_report = build_report(params=Params.model_validate({"train": {"variant": "completion_open"}}), stats=stats,
                               base_metrics=base_m, tuned_metrics=tuned_m, comparison=comparison,
                               train_metrics=train, records=RECORDS, base_rows=BASE, tuned_rows=TUNED,
                               lock_hashes={}, plot_paths={})
    assert "writes its answer without seeing the options" in open_report and "restates" not in open_report
    assert "no instructions and no options" in open_report


def test_insights_state_significance():
    base = [pred(i, "cot", False) for i in range(30)]
    tuned = [pred(i, "cot", True) for i in range(30)]
    lines = insights(compare(base, tuned), summarize(base), summarize(tuned), {})
    assert "rose from 0.000 to 1.000" in lines[0] and "a real difference at the 5% level" in lines[0]
    flat = insights(compare(base, base), summarize(base), summarize(base), {})
    assert "not distinguishable from chance" in flat[0]


def test_reward_model_section_reports_quality_or_why_it_was_skipped():
    from mcgrpo.params import RewardModelParams
    from mcgrpo.report import reward_model_section

    ok = {"skipped": False, "n_examples": 96, "n_questions": 24, "positive_rate": 0.25, "n_test": 24,
          "roc_auc": 0.81, "brier": 0.12, "brier_baseline": 0.19, "ece": 0.05}
    text = "\n".join(reward_model_section(ok, RewardModelParams(), 0.3))
    assert "| 24 | 0.81 | 0.12 | 0.19 | 0.05 |" in text and "better than chance (ROC AUC 0.81" in text
    assert "weight 0.3" in text and "carry information" in text
    skipped = {"skipped": True, "reason": "all 8 labelled completions are wrong", "n_examples": 8, "n_questions": 2,
               "positive_rate": 0.0}
    text = "\n".join(reward_model_section(skipped, RewardModelParams(), 0.0))
    assert "**Skipped:** all 8 labelled completions are wrong" in text and "learned=0.3" in text


def test_a_collapsed_policy_is_called_out():
    # The real 270M run (benchmarks/results/2026-12-01_h200_real270m_fp32): entropy 0.018, 97% of groups alike.
    base = [pred(i, "cot", i % 4 == 0) for i in range(20)]
    collapsed = {"steps": 150, "reward_first": 0.31, "reward_last10": 0.37, "entropy_last10": 0.018,
                 "frac_reward_zero_std_last10": 0.967}
    lines = insights(compare(base, base), summarize(base), summarize(base), collapsed)
    assert any("policy collapsed" in line and "97%" in line and "train.beta" in line for line in lines)
    healthy = {**collapsed, "entropy_last10": 0.9, "frac_reward_zero_std_last10": 0.3}
    assert not any("collapsed" in line for line in insights(compare(base, base), summarize(base), summarize(base),
                                                             healthy))
    assert not any("collapsed" in line for line in insights(compare(base, base), summarize(base), summarize(base), {}))


def test_train_summary_keeps_entropy_and_zero_std_share():
    from mcgrpo.training import _summary

    history = [{"reward": 0.3, "entropy": 1.0 - i / 20, "frac_reward_zero_std": i / 20, "step_time": 1.0}
               for i in range(20)]
    summary = _summary(history, steps=20, resumed_from_step=0, runtime_s=20.0)
    assert summary["entropy_last10"] == round(sum(1.0 - i / 20 for i in range(10, 20)) / 10, 4)
    assert summary["frac_reward_zero_std_last10"] == round(sum(i / 20 for i in range(10, 20)) / 10, 4)
    assert "entropy_last10" not in _summary([{"reward": 0.3}], steps=1, resumed_from_step=0, runtime_s=1.0)
    assert "kl_max" not in summary  # beta 0: TRL logs no KL


def test_kl_spikes_are_kept_and_called_out():
    # the real 270M completion_option run: KL 0.2-0.7 a step, except 7.4e6 at step 83 and 1.6e10 at step 111
    from mcgrpo.training import _summary

    history = [{"reward": 0.4, "kl": 0.3, "step": i} for i in range(1, 121)]
    history[82]["kl"], history[110]["kl"] = 7.4e6, 1.65e10
    summary = _summary(history, steps=120, resumed_from_step=0, runtime_s=1.0)
    assert summary["kl_spike_steps"] == "83,111" and summary["kl_spikes"] == 2 and summary["kl_max"] == 1.65e10
    base = [pred(i, "cot", i % 4 == 0) for i in range(20)]
    lines = insights(compare(base, base), summarize(base), summarize(base), summary)
    assert any("KL spikes** at step(s) 83, 111" in line and "1.65e+10" in line for line in lines)
    calm = _summary(history[:80], steps=80, resumed_from_step=0, runtime_s=1.0)
    calm_lines = insights(compare(base, base), summarize(base), summarize(base), calm)
    assert calm["kl_spikes"] == 0 and not any("KL spikes" in line for line in calm_lines)


def test_position_warning_when_accuracy_is_what_letter_shares_give():
    # the real 270M's completion_option run: 0.256 against 0.2495 from its letter shares alone
    warning = position_warning("completion_option", {"accuracy": 0.2564, "position_only_accuracy": 0.2495})
    assert "0.256" in warning and "0.249" in warning and "not reading" in warning
    assert position_warning("cot", {"accuracy": 0.40, "position_only_accuracy": 0.25}) is None
    assert position_warning("cot", {"accuracy": 0.40}) is None  # metrics from before the key existed


def test_blind_ceiling_note_when_accuracy_is_not_above_the_most_common_gold_letter():
    # the real 270M's seventh-session run: 0.2136 on a test set whose most common gold letter (C) is 26.83 %
    gold = {"A": 0.2154, "B": 0.2681, "C": 0.2683, "D": 0.2481}
    note = blind_ceiling_note("completion_option", {"accuracy": 0.2136, "gold_letters": gold})
    assert "0.214" in note and "0.268" in note and "always answering C" in note
    assert blind_ceiling_note("completion_option", {"accuracy": 0.30, "gold_letters": gold}) is None
    assert blind_ceiling_note("completion_option", {"accuracy": 0.25}) is None  # no gold shares recorded
