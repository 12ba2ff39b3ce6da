"""Accuracy and friends from prediction rows; no model code.

A prediction row is {id, variant, completion, pred, correct, format_ok, n_tokens, ...}. Baseline
and fine-tuned metrics use the same keys so `dvc metrics diff/show` line them up.
"""

from collections import Counter, defaultdict

import numpy as np
from scipy.stats import binomtest

from mcgrpo import paths
from mcgrpo.fileio import read_json, write_json
from mcgrpo.rewards import LETTERS

METRIC_KEYS = ("accuracy", "format_rate", "answered_rate", "mean_completion_tokens", "n")
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 2000, 0


def bootstrap_ci(correct, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED):
    """Percentile bootstrap interval of a mean (resampling questions); seeded, so reruns agree."""
    values = np.asarray(correct, dtype=float)
    if len(values) == 0:
        return 0.0, 0.0
    means = values[np.random.default_rng(seed).integers(0, len(values), (samples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return round(float(low), 4), round(float(high), 4)


def _accuracy_by(items, key) -> dict:
    groups = defaultdict(list)
    for r in items:
        groups[r.get(key) or "unknown"].append(r["correct"])
    return {g: {"accuracy": round(sum(v) / len(v), 4), "n": len(v)} for g, v in sorted(groups.items())}


def _letter_shares(letters, n: int, n_letters: int) -> dict:
    """Share of each letter A.. up to the most options any question has, 0 included: the keys never depend
    on what a model happened to predict, so base and fine-tuned metrics (and two revisions) line up."""
    counts = Counter(letters)
    return {k: round(counts[k] / n, 4) for k in LETTERS[:n_letters]}


def summarize(rows: list[dict]) -> dict:
    """Per variant: accuracy with a bootstrap 95% interval, format and answer rates, lengths, breakdowns
    by source and question kind, and predicted vs gold letter shares (position bias)."""
    by_variant = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    out = {}
    for variant, items in by_variant.items():
        n = len(items)
        low, high = bootstrap_ci([r["correct"] for r in items])
        answered = [r["pred"] for r in items if r["pred"]]
        golds = [r["answer"] for r in items if r.get("answer")]
        n_letters = max([r.get("n_options", 0) for r in items] + [LETTERS.index(x) + 1 for x in answered + golds])
        pred_share = _letter_shares(answered, max(len(answered), 1), n_letters)
        gold_share = _letter_shares(golds, n, n_letters)
        out[variant] = {
            "accuracy": round(sum(r["correct"] for r in items) / n, 4),
            "accuracy_ci_low": low,
            "accuracy_ci_high": high,
            "format_rate": round(sum(r["format_ok"] for r in items) / n, 4),
            "answered_rate": round(len(answered) / n, 4),
            "mean_completion_tokens": round(sum(r["n_tokens"] for r in items) / n, 1),
            "mean_reasoning_words": round(sum(r.get("reasoning_words", 0) for r in items) / n, 1),
            "n": n,
            # total variation distance between predicted and gold letter shares: 0 = no position bias
            "letter_bias": round(sum(abs(pred_share.get(k, 0) - gold_share.get(k, 0)) for k in LETTERS) / 2, 4)
            if answered else None,
            # what a model answering as often, with the same letter shares but blind to the question, would
            # score: accuracy near it is position preference, not reading
            "position_only_accuracy": round(len(answered) / n * sum(pred_share[k] * gold_share[k] for k in pred_share),
                                            4),
            "pred_letters": pred_share,
            "gold_letters": gold_share,
            "by_source": _accuracy_by(items, "source"),
            "by_kind": _accuracy_by(items, "kind"),
        }
        if "correct_norm" in items[0]:  # log-likelihood scoring: lm-eval's acc_norm too
            out[variant]["accuracy_norm"] = round(sum(r["correct_norm"] for r in items) / n, 4)
    return out


# What metrics/*.json keep per variant, so `dvc metrics show --md` and a PR's `dvc metrics diff` fit a screen;
# the rest (counts, breakdowns by source, kind and letter) goes to metrics/breakdowns/, which the report and plots
# read too. Log-likelihood scoring always answers in format with no tokens, so those rates are left out for it.
HEADLINE_KEYS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "format_rate", "answered_rate",
                 "mean_completion_tokens", "letter_bias", "position_only_accuracy")
LOGLIK_HEADLINE_KEYS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_norm", "letter_bias",
                        "position_only_accuracy")
COMPARISON_HEADLINE_KEYS = ("accuracy_delta", "accuracy_delta_ci_low", "accuracy_delta_ci_high", "p_value",
                            "format_rate_delta")


def write_metrics(path, per_variant: dict) -> None:
    """Headline numbers per variant to `path`, everything else to its breakdown file; read_metrics joins them."""
    headline, rest = {}, {}
    for variant, m in per_variant.items():
        keys = (COMPARISON_HEADLINE_KEYS if "accuracy_delta" in m else
                LOGLIK_HEADLINE_KEYS if "accuracy_norm" in m else HEADLINE_KEYS)
        headline[variant] = {k: m[k] for k in keys if k in m}
        rest[variant] = {k: v for k, v in m.items() if k not in keys}
    write_json(paths.breakdown_of(path), rest)  # first: a headline file never points at a missing breakdown
    write_json(path, headline)


def read_metrics(path) -> dict:
    """A metrics file joined with its breakdown (what summarize or compare returned)."""
    headline, rest = read_json(path), read_json(paths.breakdown_of(path))
    return {variant: {**m, **rest.get(variant, {})} for variant, m in headline.items()}


def mcnemar_exact(base_correct: list[bool], tuned_correct: list[bool]) -> dict:
    """Exact (binomial) McNemar test on paired outcomes: only the discordant pairs carry evidence."""
    fixed = sum(1 for b, t in zip(base_correct, tuned_correct) if t and not b)
    broken = sum(1 for b, t in zip(base_correct, tuned_correct) if b and not t)
    p = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    # three significant figures, not decimals: on a whole test set p is often far below 1e-6, and 0.0 says nothing
    return {"fixed": fixed, "broken": broken, "p_value": float(f"{p:.3g}")}


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
            # a paired bootstrap interval of the accuracy change (same questions resampled for both)
            **dict(zip(("accuracy_delta_ci_low", "accuracy_delta_ci_high"),
                       bootstrap_ci([t - b for b, t in pairs]) if pairs else (0.0, 0.0))),
            "n_paired": len(pairs),
            **mcnemar_exact([b for b, _ in pairs], [t for _, t in pairs]),
        }
    return out


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def format_metrics(by_model: dict) -> str:
    """{"base": summarize(...), ...} as one markdown table, a row per model and variant."""
    header = ["model", "variant", "accuracy (95% CI)", *METRIC_KEYS[1:], "letter bias"]
    rows = [[model, variant, f"{m['accuracy']:.3f} [{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}]",
             *(m[k] for k in METRIC_KEYS[1:]), m["letter_bias"]]
            for model, variants in by_model.items() for variant, m in variants.items()]
    return markdown_table(header, rows)


def format_comparison(comparison: dict) -> str:
    header = ["variant", "base acc", "fine-tuned acc", "change (95% CI)", "fixed", "broken", "McNemar p",
              "format change"]
    rows = [[v, c["base_accuracy"], c["finetuned_accuracy"],
             f"{c['accuracy_delta']:+.4f} [{c['accuracy_delta_ci_low']:+.3f}, {c['accuracy_delta_ci_high']:+.3f}]",
             c["fixed"], c["broken"], c["p_value"], f"{c['format_rate_delta']:+.4f}"] for v, c in comparison.items()]
    return markdown_table(header, rows)


def training_rows(tp, train_metrics: dict) -> list[list]:
    """The training settings and outcome as [param, value] rows: the report's table and the model card's."""
    return [
        ["backend", train_metrics.get("backend", "?")],
        ["LoRA", f"r={tp.lora.r}, alpha={tp.lora.alpha}, dropout={tp.lora.dropout}, "
                 f"targets={','.join(tp.lora.target_modules)}"] if tp.finetune == "lora" else
        ["fine-tuning", "full (every weight)"],
        ["steps", f"{train_metrics.get('steps')} (max_steps {tp.max_steps})"],
        ["batch", f"{tp.per_device_train_batch_size} completions x {tp.gradient_accumulation_steps} accumulation, "
                  f"{tp.num_generations} generations per prompt"],
        ["optimiser", f"{tp.optim}, lr {tp.learning_rate}, {tp.lr_scheduler_type}, warmup {tp.warmup_steps}"],
        ["GRPO", f"loss {tp.loss_type}, beta {tp.beta}, epsilon {tp.epsilon}, scale_rewards {tp.scale_rewards}, "
                 f"temperature {tp.temperature}, max completion {tp.max_completion_length} tokens"],
        ["prompt variant", tp.variant],
        ["option order", "shuffled for each completion" if tp.option_order == "per_completion" else "as in the data"],
        ["reward weights", ", ".join(f"{k} {v}" for k, v in tp.reward_weights.items())],
        ["reward (first step → mean of last 10)", f"{train_metrics.get('reward_first')} → "
                                                  f"{train_metrics.get('reward_last10')}"],
        ["runtime", f"{train_metrics.get('train_runtime_s')} s"],
    ] + ([["step time (mean of last 10)", f"{train_metrics.get('step_time_s_last10')} s: " + ", ".join(
        f"{name.replace('_', ' ')} {seconds} s" for name, seconds in phases.items())]]
         if (phases := train_metrics.get("step_phases_s_last10")) else [])
