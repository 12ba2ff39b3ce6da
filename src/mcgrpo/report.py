"""The markdown report: what data, which prompts and reward, how trained, what changed, examples."""

import datetime
from pathlib import Path

from mcgrpo.metrics import format_comparison, format_metrics, markdown_table, training_rows
from mcgrpo.params import LEARNED_REWARD
from mcgrpo.prompts import INSTRUCTIONS, LAYOUTS, completion_text, format_question, is_chat
from mcgrpo.rewards import OPEN_VARIANT, OPTION_VARIANT, PICK_VARIANT, REWARDS

EXAMPLE_KINDS = {
    "improved": ("fixed by fine-tuning (base wrong, fine-tuned right)", lambda b, t: not b and t),
    "regressed": ("broken by fine-tuning (base right, fine-tuned wrong)", lambda b, t: b and not t),
    "both_wrong": ("wrong before and after", lambda b, t: not b and not t),
}


def select_examples(records, base_rows, tuned_rows, variant: str, n: int) -> dict:
    """Per kind, up to n paired examples for one variant; shortest passages first, then by id.

    A fixed rule (not a random draw) so the report is reproducible and readable.
    """
    by_id = {r["id"]: r for r in records}
    base = {r["id"]: r for r in base_rows if r["variant"] == variant}
    pairs = [(base[r["id"]], r) for r in tuned_rows if r["variant"] == variant and r["id"] in base]
    pairs.sort(key=lambda p: (len(by_id[p[0]["id"]]["context"]), p[0]["id"]))
    return {kind: [(by_id[b["id"]], b, t) for b, t in pairs if rule(b["correct"], t["correct"])][:n]
            for kind, (_, rule) in EXAMPLE_KINDS.items()}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


def _breakdown_table(base: dict, tuned: dict, key: str) -> str:
    """Accuracy per group (source or question kind) and variant, base vs fine-tuned."""
    rows = []
    for variant in (v for v in base if v in tuned):
        for group, b in base[variant][key].items():
            t = tuned[variant][key].get(group, {"accuracy": float("nan")})
            rows.append([variant, group, b["n"], b["accuracy"], t["accuracy"], f"{t['accuracy'] - b['accuracy']:+.3f}"])
    return markdown_table(["variant", key.removeprefix("by_"), "n", "base", "fine-tuned", "change"], rows)


def _letters_table(base: dict, tuned: dict) -> str:
    rows = []
    for variant in (v for v in base if v in tuned):
        gold = base[variant]["gold_letters"]
        for label, m in (("gold", None), ("base", base[variant]), ("fine-tuned", tuned[variant])):
            shares = gold if m is None else m["pred_letters"]
            bias = "" if m is None else m["letter_bias"]
            rows.append([variant, label, *(f"{shares.get(k, 0):.0%}" for k in gold), bias])
    letters = list(next(iter(base.values()))["gold_letters"]) if base else []
    return markdown_table(["variant", "letters of", *letters, "bias (TV distance)"], rows)


def insights(comparison: dict, base: dict, tuned: dict, train_metrics: dict, alpha: float = 0.05) -> list[str]:
    """Plain statements read off the numbers, so the report says what the tables mean."""
    out = []
    for variant, c in comparison.items():
        significant = c["p_value"] < alpha
        direction = "rose" if c["accuracy_delta"] > 0 else "fell" if c["accuracy_delta"] < 0 else "did not change"
        out.append(f"`{variant}`: accuracy {direction} from {c['base_accuracy']:.3f} to {c['finetuned_accuracy']:.3f} "
                   f"({c['accuracy_delta']:+.3f}, 95% CI [{c['accuracy_delta_ci_low']:+.3f}, "
                   f"{c['accuracy_delta_ci_high']:+.3f}]); {c['fixed']} questions fixed, {c['broken']} broken, "
                   f"McNemar p = {c['p_value']:.3g}: " + ("a real difference at the 5% level." if significant else
                                                         "not distinguishable from chance at the 5% level."))
        if variant in tuned and variant in base and base[variant]["format_rate"] != tuned[variant]["format_rate"]:
            out.append(f"`{variant}`: answers in the asked-for format went from {base[variant]['format_rate']:.0%} to "
                       f"{tuned[variant]['format_rate']:.0%}.")
        bias = tuned.get(variant, {}).get("letter_bias")
        if bias is not None and bias > 0.2:
            favourite = max(tuned[variant]["pred_letters"], key=tuned[variant]["pred_letters"].get)
            out.append(f"`{variant}`: the fine-tuned model leans on letter {favourite} (letter bias {bias:.2f}); "
                       "part of its accuracy may be position preference rather than reading.")
        if warning := position_warning(variant, tuned.get(variant, {})):
            out.append(warning)
        if note := blind_ceiling_note(variant, tuned.get(variant, {})):
            out.append(note)
    if train_metrics.get("reward_first") is not None:
        out.append(f"Training reward went from {train_metrics['reward_first']} (first step) to "
                   f"{train_metrics['reward_last10']} (mean of the last 10 steps) over {train_metrics['steps']} steps.")
    if warning := collapse_warning(train_metrics):
        out.append(warning)
    if steps := train_metrics.get("kl_spike_steps"):
        out.append(f"**KL spikes** at step(s) {steps.replace(',', ', ')} (largest KL estimate "
                   f"{train_metrics['kl_max']:.3g}): the sampled tokens were near-impossible under the policy that "
                   "sampled them, so rollouts and the training forward disagreed there, and each such step's update "
                   "was driven by the KL term (README: When things go wrong).")
    return out


def position_warning(variant: str, m: dict, margin: float = 0.02) -> str | None:
    """A sentence when the fine-tuned accuracy is within `margin` of what its letter shares alone would score."""
    accuracy, position_only = m.get("accuracy"), m.get("position_only_accuracy")
    if accuracy is None or position_only is None or accuracy - position_only >= margin:
        return None
    return (f"`{variant}`: the fine-tuned accuracy {accuracy:.3f} is within {margin} of {position_only:.3f}, what a "
            "model answering as often with the same letter shares, blind to the question, would score "
            "(`position_only_accuracy`): the model is not reading the passage better than chance.")


def blind_ceiling_note(variant: str, m: dict) -> str | None:
    """A sentence when the fine-tuned accuracy is not above what always giving the eval set's most common gold letter
    scores: the most any model blind to the questions can reach here, so nothing at this level shows reading."""
    accuracy, gold = m.get("accuracy"), m.get("gold_letters")
    if accuracy is None or not gold:
        return None
    letter = max(gold, key=gold.get)
    if accuracy > gold[letter]:
        return None
    return (f"`{variant}`: the fine-tuned accuracy {accuracy:.3f} is not above {gold[letter]:.3f}, what always answering "
            f"{letter} scores on this eval set (its most common gold letter): a model that never reads the questions "
            "can reach this level, so the result does not show reading.")


def collapse_warning(train_metrics: dict, max_entropy: float = 0.05, min_frac_zero_std: float = 0.9) -> str | None:
    """A sentence when the policy ended collapsed: near-zero entropy, or (almost) every group of completions
    scored alike, so GRPO's advantages were zero and the last steps taught nothing."""
    entropy, frac = train_metrics.get("entropy_last10"), train_metrics.get("frac_reward_zero_std_last10")
    if (entropy is None or entropy > max_entropy) and (frac is None or frac < min_frac_zero_std):
        return None
    seen = [f"token entropy {entropy}" if entropy is not None else "",
            f"{frac:.0%} of the groups had one reward for all their completions (zero advantage: no learning signal)"
            if frac is not None else ""]
    return (f"**The policy collapsed** (last 10 steps: {'; '.join(filter(None, seen))}). Try a KL penalty "
            "(`-S train.beta=0.04`), a lower `train.learning_rate`, more `train.num_generations`, or a higher "
            "`train.temperature`.")


def _stats_section(stats: dict) -> str:
    rows = []
    for role in ("train", "eval"):
        s = stats[role]
        rows.append([role, s["n"], s["dropped_too_long"], ", ".join(f"{k}: {v}" for k, v in s["by_source"].items()),
                     f"{s['context_tokens']['p50']} / {s['context_tokens']['p90']} / {s['context_tokens']['max']}",
                     ", ".join(f"{k} {v:.0%}" for k, v in s["answer_letters"].items()),
                     ", ".join(f"{k}: {v}" for k, v in s["question_kinds"].items())])
    header = ["split", "questions", f"dropped (> {stats['max_prompt_tokens']} prompt tokens)", "sources",
              "passage tokens p50 / p90 / max", "gold letters", "question kinds"]
    return markdown_table(header, rows)


def reward_model_section(rm: dict, rp, weight: float) -> list[str]:
    """How well the learned reward predicts correctness on held-out questions, or why it was skipped."""
    use = (f"Training used it with weight {weight} (`train.reward_weights.learned`)." if weight else
           "Training did not use it (`train.reward_weights.learned` is 0); try "
           "`dvc exp run -S train.reward_weights.learned=0.3` for a hybrid run.")
    intro = (f"A `{rp.classifier}` classifier over TF-IDF of the reasoning (answer masked) and overlap, length and "
             f"format features, fitted on {rm['n_examples']} sampled base-model answers to {rm['n_questions']} "
             f"training questions ({rm['positive_rate']:.0%} right) labelled by the rule reward. " if rm.get("n_examples")
             else "")
    if rm.get("skipped"):
        return [intro + f"**Skipped:** {rm['reason']}. " + use]
    quality = ("better than chance" if rm["roc_auc"] >= 0.6 else "barely better than chance" if rm["roc_auc"] > 0.5
               else "no better than chance")
    return [intro + use, markdown_table(
        ["held-out completions", "ROC AUC", "Brier", "Brier of the base rate", "ECE"],
        [[rm["n_test"], rm["roc_auc"], rm["brier"], rm["brier_baseline"], rm["ece"]]]),
        f"On questions it never saw, it ranks right answers above wrong ones {quality} (ROC AUC {rm['roc_auc']:.2f}; "
        "0.5 is chance); ECE is the mean gap between predicted and observed correctness over 10 bins. "
        + ("Its Brier score beats always predicting the base rate, so its probabilities carry information."
           if rm["brier"] < rm["brier_baseline"] else
           "Its Brier score is no better than always predicting the base rate: as a reward it adds mostly noise.")]


def build_report(*, params, stats, base_metrics, tuned_metrics, comparison, train_metrics, records, base_rows,
                 tuned_rows, lock_hashes: dict, plot_paths: dict, reward_model_metrics: dict | None = None) -> str:
    """reports/report.md: one section after the other, each built by its own function below."""
    p = params
    out = [*_title(p), *_dataset_section(p, stats), *_prompts_section(p, records),
           *_reward_section(p, reward_model_metrics), *_training_section(p, train_metrics, lock_hashes),
           *_results_section(p, base_metrics, tuned_metrics, comparison, plot_paths),
           "## Insights",
           "\n".join(f"- {line}" for line in insights(comparison, base_metrics, tuned_metrics, train_metrics)),
           *_examples_section(p, records, base_rows, tuned_rows), *_limitations_and_ideas(p)]
    return "\n\n".join(out) + "\n"


def _title(p) -> list[str]:
    local = Path(p.model.name).exists() or p.model.name.startswith((".", "/"))
    model_link = f"`{p.model.name}` (local)" if local else f"[{p.model.name}](https://huggingface.co/{p.model.name})"
    return [f"# GRPO fine-tuning of `{p.model.name}` for multiple-choice reading comprehension",
            f"_Generated by the `report` stage on {datetime.date.today().isoformat()}._ Base model: {model_link}; "
            f"LoRA adapter: `models/adapter/`."]


def _dataset_section(p, stats) -> list[str]:
    return ["## Dataset",
            f"Source `{p.prepare.source}`: `{p.prepare.path}`" + (f" (config `{p.prepare.config}`)" if p.prepare.config else "")
            + f"; train split `{p.prepare.train_split}`, eval split `{p.prepare.eval_split}`, sampled with seed "
            f"{p.prepare.seed}.",
            _stats_section(stats)]


def _prompts_section(p, records) -> list[str]:
    tp = p.train
    example_prompt = (format_question(records[0]) if is_chat(tp.variant) else completion_text(records[0], tp.variant)) \
        if records else ""
    return ["## Prompts",
            "Chat variants (`direct`, `cot`) are one user turn (Gemma has no system role) wrapped by the tokenizer's "
            "chat template; completion variants are plain text that ends where the answer starts, for pretrained "
            f"models ({p.prepare.n_shots} solved train question(s) shown first). Variants evaluated: "
            f"{', '.join(f'`{v}`' for v in p.eval.variants)}; trained: `{tp.variant}`.",
            "\n".join(f"- **{name}**: {text or f'({LAYOUTS[name]})'}"
                      for name, text in INSTRUCTIONS.items() if name in p.eval.variants or name == tp.variant),
            f"Example of the trained prompt (`{tp.variant}`):",
            f"```text\n{_clip(example_prompt, 1200)}\n```"]


def _first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line (a first line alone can stop mid-sentence)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _reward_section(p, reward_model_metrics) -> list[str]:
    weights = p.train.reward_weights
    return ["## Reward",
            "`mc_reward` is a weighted sum of pure functions from `mcgrpo.rewards.REWARDS`:",
            "\n".join(f"- `{name}` (weight {weights.get(name, 0)}): {_first_paragraph(fn.__doc__)}"
                      for name, fn in REWARDS.items()),
            ("The answer is the option the completion's first line restates (word-overlap F1 at least 0.6 with it "
             "and above every other option); a blend of two options, or new words, count as no answer."
             if p.train.variant == OPTION_VARIANT else
             "The model writes its answer without seeing the options; the answer is the one option its first line "
             "names (holds a word that no other option has, function words aside); a line naming none, or several, "
             "counts as no answer." if p.train.variant == OPEN_VARIANT else
             "The model answers without seeing the options, under a constraint that lets it write one option, whole "
             "(its own probabilities over the option texts choose which); the answer is the option it wrote." if
             p.train.variant == PICK_VARIANT else
             "The answer letter is extracted from the **last** declaration (`<answer>C</answer>`, `Answer: C`, "
             "`\\boxed{C}`, ...); two letters, or a letter outside the options, count as no answer."),
            *(["### Learned reward model", *reward_model_section(reward_model_metrics, p.reward_model,
                                                                  weights.get(LEARNED_REWARD, 0.0))]
              if reward_model_metrics else [])]


def _training_section(p, train_metrics, lock_hashes) -> list[str]:
    return ["## Training configuration",
            markdown_table(["param", "value"], [
                ["model", f"`{p.model.name}`" + (f" @ {p.model.revision}" if p.model.revision else "")],
                *training_rows(p.train, train_metrics),
                *[[f"dvc.lock `{path}`", f"`{md5}`"] for path, md5 in lock_hashes.items()],
            ])]


def _results_section(p, base_metrics, tuned_metrics, comparison, plot_paths) -> list[str]:
    loglik = "loglik" in base_metrics
    return ["## Results",
            f"Same questions, same prompts, same {p.eval.max_new_tokens}-token budget and temperature "
            f"{p.eval.temperature} for both models. Intervals are percentile bootstraps over questions (2,000 "
            "resamples); the p-value is an exact McNemar test on the paired outcomes."
            + (" `loglik` scores each option by its log-likelihood after the passage and question, as "
               "lm-evaluation-harness does for RACE (no generation; `accuracy_norm` divides by option length)."
               if loglik else ""),
            format_comparison(comparison),
            format_metrics({"base": base_metrics, "fine-tuned": tuned_metrics}),
            *([f"Log-likelihood `accuracy_norm`: base {base_metrics['loglik']['accuracy_norm']}, fine-tuned "
               f"{tuned_metrics['loglik']['accuracy_norm']}."] if loglik else []),
            "### By source", _breakdown_table(base_metrics, tuned_metrics, "by_source"),
            "### By question kind", _breakdown_table(base_metrics, tuned_metrics, "by_kind"),
            "### Answer letters (position bias)",
            "Share of each letter among answers given, against the gold letters; the bias is the total variation "
            "distance between the two (0 = none).",
            _letters_table(base_metrics, tuned_metrics),
            "### Plots",
            *[f"![{name}]({path})" for name, path in plot_paths.items()]]


def _examples_section(p, records, base_rows, tuned_rows) -> list[str]:
    variant = p.train.variant
    examples = select_examples(records, base_rows, tuned_rows, variant, p.report.n_examples)

    def code(text):
        return f"```text\n{_clip(text, p.report.max_example_chars)}\n```"

    out = ["## Examples"]
    for kind, (title, _) in EXAMPLE_KINDS.items():
        out.append(f"### {title.capitalize()} — {len(examples[kind])} shown ({variant} prompt)")
        for record, b, t in examples[kind]:
            out += [f"**{record['id']}** (gold {record['answer']}, base {b['pred']}, fine-tuned {t['pred']})",
                    code(format_question(record)), "Base model:", code(b["completion"]),
                    "Fine-tuned model:", code(t["completion"])]
        if not examples[kind]:
            out.append("_None in this eval set._")
    return out


def _limitations_and_ideas(p) -> list[str]:
    return ["## Limitations",
            "\n".join([
                f"- Accuracy is measured on {p.prepare.n_eval or 'all'} questions of the `{p.prepare.eval_split}` split; "
                "read the intervals before the point estimates.",
                "- The reward checks the final letter only: reasoning that reaches the right letter for the wrong "
                "reason is rewarded too. Read the examples.",
                f"- Questions whose prompt exceeds {p.prepare.max_prompt_tokens} tokens were dropped "
                "(see the dataset table), so the longest passages are not represented.",
                "- Greedy decoding with one sample per question; accuracy under sampling may differ."]),
            "## Ideas",
            "\n".join([
                "- Sweep `train.learning_rate`, `train.beta` and `train.num_generations` with `dvc exp run --queue`.",
                "- Add the `tags` partial-format reward while the format is still being learnt "
                "(`train.reward_weights.tags`).",
                "- Train on RACE-high only (`prepare.config: high`) and check transfer to middle, or evaluate on "
                "QuALITY's long passages.",
                "- Compare with log-likelihood accuracy: a gain in generation but not in `loglik` suggests the model "
                "learnt the answer format more than the reading."])]
