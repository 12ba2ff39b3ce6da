"""Accuracy and friends from prediction rows; no model code.

A prediction row is {id, variant, completion, pred, correct, format_ok, n_tokens, ...}. Baseline
and fine-tuned metrics use the same keys so `dvc metrics diff/show` line them up.
"""

from collections import defaultdict

from scipy.stats import binomtest

METRIC_KEYS = ("accuracy", "format_rate", "answered_rate", "mean_completion_tokens", "n")


def summarize(rows: list[dict]) -> dict:
    """Per variant: accuracy, format_rate, answered_rate (a letter was extracted), mean tokens, n."""
    by_variant = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    out = {}
    for variant, items in by_variant.items():
        n = len(items)
        out[variant] = {
            "accuracy": round(sum(r["correct"] for r in items) / n, 4),
            "format_rate": round(sum(r["format_ok"] for r in items) / n, 4),
            "answered_rate": round(sum(r["pred"] is not None for r in items) / n, 4),
            "mean_completion_tokens": round(sum(r["n_tokens"] for r in items) / n, 1),
            "n": n,
        }
    return out


def mcnemar_exact(base_correct: list[bool], tuned_correct: list[bool]) -> dict:
    """Exact (binomial) McNemar test on paired outcomes: only the discordant pairs carry evidence."""
    fixed = sum(1 for b, t in zip(base_correct, tuned_correct) if t and not b)
    broken = sum(1 for b, t in zip(base_correct, tuned_correct) if b and not t)
    p = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "p_value": round(float(p), 6)}


def compare(base_rows: list[dict], tuned_rows: list[dict]) -> dict:
    """Per variant: deltas of every metric, and the paired McNemar test on the shared questions."""
    base, tuned = summarize(base_rows), summarize(tuned_rows)
    base_by_key = {(r["variant"], r["id"]): r["correct"] for r in base_rows}
    out = {}
    for variant in sorted(set(base) & set(tuned)):
        pairs = [(base_by_key[(variant, r["id"])], r["correct"]) for r in tuned_rows
                 if r["variant"] == variant and (variant, r["id"]) in base_by_key]
        out[variant] = {
            **{f"{k}_delta": round(tuned[variant][k] - base[variant][k], 4) for k in METRIC_KEYS if k != "n"},
            "base_accuracy": base[variant]["accuracy"],
            "finetuned_accuracy": tuned[variant]["accuracy"],
            "n_paired": len(pairs),
            **mcnemar_exact([b for b, _ in pairs], [t for _, t in pairs]),
        }
    return out


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def format_metrics(by_model: dict) -> str:
    """{"base": summarize(...), ...} as one markdown table, a row per model and variant."""
    header = ["model", "variant", *METRIC_KEYS]
    rows = [[model, variant, *(m[k] for k in METRIC_KEYS)]
            for model, variants in by_model.items() for variant, m in variants.items()]
    return markdown_table(header, rows)


def format_comparison(comparison: dict) -> str:
    header = ["variant", "base acc", "fine-tuned acc", "change", "fixed", "broken", "McNemar p", "format change"]
    rows = [[v, c["base_accuracy"], c["finetuned_accuracy"], f"{c['accuracy_delta']:+.4f}", c["fixed"], c["broken"],
             c["p_value"], f"{c['format_rate_delta']:+.4f}"] for v, c in comparison.items()]
    return markdown_table(header, rows)
