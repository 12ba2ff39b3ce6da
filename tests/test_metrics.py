import json

import pytest

from mcgrpo.metrics import (
    HEADLINE_KEYS,
    bootstrap_ci,
    compare,
    format_comparison,
    format_metrics,
    mcnemar_exact,
    read_metrics,
    summarize,
    write_metrics,
)


def row(i, variant, correct, pred="A", fmt=True, n=10, answer="A", source="s1", kind="wh"):
    return {"id": str(i), "variant": variant, "correct": correct, "pred": pred, "format_ok": fmt, "n_tokens": n,
            "answer": answer, "source": source, "kind": kind, "reasoning_words": n // 2}


def test_summarize_per_variant():
    rows = [row(0, "cot", True), row(1, "cot", False, pred=None, fmt=False, n=20, source="s2", kind="fill-in"),
            row(0, "direct", False, pred="B")]
    m = summarize(rows)["cot"]
    assert (m["accuracy"], m["format_rate"], m["answered_rate"], m["mean_completion_tokens"], m["n"]) == \
        (0.5, 0.5, 0.5, 15.0, 2)
    assert m["mean_reasoning_words"] == 7.5
    assert m["by_source"] == {"s1": {"accuracy": 1.0, "n": 1}, "s2": {"accuracy": 0.0, "n": 1}}
    assert m["by_kind"] == {"fill-in": {"accuracy": 0.0, "n": 1}, "wh": {"accuracy": 1.0, "n": 1}}
    assert summarize(rows)["direct"]["accuracy"] == 0.0


def test_letter_bias_is_total_variation_distance():
    # gold is uniform over A-D, the model always answers A: distance = 1 - 1/4
    rows = [row(i, "cot", i % 4 == 0, pred="A", answer="ABCD"[i % 4]) for i in range(8)]
    m = summarize(rows)["cot"]
    assert m["pred_letters"] == {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0} and m["gold_letters"] == {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    assert m["letter_bias"] == 0.75
    assert m["position_only_accuracy"] == 0.25 == m["accuracy"]  # always-A scores exactly what position gives
    unbiased = summarize([row(i, "cot", True, pred="ABCD"[i % 4], answer="ABCD"[i % 4]) for i in range(8)])
    assert unbiased["cot"]["letter_bias"] == 0.0


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n():
    small = [True, False] * 10  # accuracy 0.5, n=20
    large = [True, False] * 500  # accuracy 0.5, n=1000
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4  # width ~ 1/sqrt(n): sqrt(50) ~ 7x narrower
    assert abs((hi_l - lo_l) - 2 * 1.96 * (0.25 / 1000) ** 0.5) < 0.01  # matches the normal approximation
    assert bootstrap_ci(small) == (lo_s, hi_s)  # seeded: reruns agree
    assert bootstrap_ci([True] * 30) == (1.0, 1.0)


def test_mcnemar_exact_known_table():
    # 10 discordant pairs, 9 fixed vs 1 broken: two-sided binomial p = 2 * P(X<=1 | n=10, 1/2) = 22/1024
    base = [False] * 9 + [True] + [True] * 5
    tuned = [True] * 9 + [False] + [True] * 5
    out = mcnemar_exact(base, tuned)
    assert out["fixed"] == 9 and out["broken"] == 1
    assert out["p_value"] == pytest.approx(22 / 1024, rel=1e-3)
    # significant figures, not decimals: a whole test set's p far below 1e-6 must not read 0
    assert mcnemar_exact([False] * 100, [True] * 100)["p_value"] == pytest.approx(2 * 0.5**100, rel=1e-3)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pairs


def test_compare_pairs_by_id():
    base = [row(i, "cot", i < 2) for i in range(4)]
    tuned = [row(i, "cot", i >= 1) for i in range(4)]
    c = compare(base, tuned)["cot"]
    assert c["base_accuracy"] == 0.5 and c["finetuned_accuracy"] == 0.75 and c["accuracy_delta"] == 0.25
    assert (c["fixed"], c["broken"], c["n_paired"]) == (2, 1, 4)
    assert c["accuracy_delta_ci_low"] <= 0.25 <= c["accuracy_delta_ci_high"]
    table = format_comparison({"cot": c})
    assert "| cot | 0.5 | 0.75 | +0.2500 [" in table and "| 2 | 1 |" in table
    assert "0.500 [" in format_metrics({"base": summarize(base)})


def test_loglik_accuracy_norm_key():
    rows = [dict(row(0, "loglik", True), correct_norm=False), dict(row(1, "loglik", True), correct_norm=True)]
    m = summarize(rows)["loglik"]
    assert m["accuracy"] == 1.0 and m["accuracy_norm"] == 0.5


def test_metrics_files_keep_headlines_and_breakdowns_join_back(tmp_path):
    base = [row(i, "cot", i % 2 == 0, source=f"s{i % 3}") for i in range(6)]
    tuned = [row(i, "cot", True) for i in range(6)]
    loglik = [{**row(i, "loglik", True, n=0), "correct_norm": False} for i in range(6)]
    summary, comparison = summarize(base + loglik), compare(base, tuned)
    write_metrics(tmp_path / "baseline.json", summary)
    write_metrics(tmp_path / "comparison.json", comparison)
    headline = json.loads((tmp_path / "baseline.json").read_text())
    assert tuple(headline["cot"]) == HEADLINE_KEYS  # what `dvc metrics show` lists: no breakdowns, no counts
    assert set(headline["loglik"]) == {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_norm",
                                       "letter_bias", "position_only_accuracy"}
    assert set(json.loads((tmp_path / "comparison.json").read_text())["cot"]) == \
        {"accuracy_delta", "accuracy_delta_ci_low", "accuracy_delta_ci_high", "p_value", "format_rate_delta"}
    rest = json.loads((tmp_path / "breakdowns" / "baseline.json").read_text())
    assert "by_source" in rest["cot"] and "n" in rest["cot"] and "accuracy" not in rest["cot"]
    assert read_metrics(tmp_path / "baseline.json") == summary and read_metrics(tmp_path / "comparison.json") == comparison


def test_position_only_accuracy_counts_unanswered_and_letter_shares():
    # gold A for 3 of 4 questions; the model answers 2 of 4, both "A": shares A 1.0, answered 0.5 -> 0.5 * 0.75
    rows = [row(0, "cot", True, pred="A", answer="A"), row(1, "cot", False, pred="A", answer="B"),
            row(2, "cot", False, pred=None, answer="A"), row(3, "cot", False, pred=None, answer="A")]
    assert summarize(rows)["cot"]["position_only_accuracy"] == 0.375
