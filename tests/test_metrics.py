import pytest

from mcgrpo.metrics import compare, format_comparison, mcnemar_exact, summarize


def row(i, variant, correct, pred="A", fmt=True, n=10):
    return {"id": str(i), "variant": variant, "correct": correct, "pred": pred, "format_ok": fmt, "n_tokens": n}


def test_summarize_per_variant():
    rows = [row(0, "cot", True), row(1, "cot", False, pred=None, fmt=False, n=20), row(0, "direct", False)]
    m = summarize(rows)
    assert m["cot"] == {"accuracy": 0.5, "format_rate": 0.5, "answered_rate": 0.5, "mean_completion_tokens": 15.0,
                        "n": 2}
    assert m["direct"]["accuracy"] == 0.0 and m["direct"]["n"] == 1


def test_mcnemar_exact_known_table():
    # 10 discordant pairs, 9 fixed vs 1 broken: two-sided binomial p = 2 * P(X<=1 | n=10, 1/2) = 22/1024
    base = [False] * 9 + [True] + [True] * 5
    tuned = [True] * 9 + [False] + [True] * 5
    out = mcnemar_exact(base, tuned)
    assert out["fixed"] == 9 and out["broken"] == 1
    assert out["p_value"] == pytest.approx(22 / 1024, abs=1e-6)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pairs


def test_compare_pairs_by_id():
    base = [row(i, "cot", i < 2) for i in range(4)]
    tuned = [row(i, "cot", i >= 1) for i in range(4)]
    c = compare(base, tuned)["cot"]
    assert c["base_accuracy"] == 0.5 and c["finetuned_accuracy"] == 0.75 and c["accuracy_delta"] == 0.25
    assert (c["fixed"], c["broken"], c["n_paired"]) == (2, 1, 4)
    assert "| cot | 0.5 | 0.75 | +0.2500 | 2 | 1 |" in format_comparison({"cot": c})
