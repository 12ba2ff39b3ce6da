"""Does the model read the passage? Option log-likelihood with the article and without it, on the same questions.

Accuracy with the article minus accuracy without it is what reading adds; a gain from training that this check
does not show, or a base model that gains little from the article, says the model chooses from the question and the
options alone (their wording, their length, how likely each is as an answer). The best question-blind policy
(always the most common gold position) is reported beside it: a generated-answer gain above it needs reading.

--listed also asks whether that reading reaches the prompt a generated answer follows. It scores each option as the
continuation of the `completion_option` prompt (the options listed, then "Answer:" and "-"): that is the
probability of the model writing exactly that option there. Scored in the data's order, the highest one is the
answer greedy decoding would aim at, position habits included. Averaged over every cyclic rotation of the option
list (each option shown once in each position), the position habit cancels, and what is left is how far the
written answer's distribution follows the passage.

--own-line asks whether the model's own free answer points to an option even when it names none: the denser signal
a `completion_open` reward could use. It writes the model's `completion_open` line (greedy, --line-tokens), then
scores each option after the prompt, that line and "\nSo the answer is:". It reports that choice's accuracy overall
and split by whether `rewards.named_option` reads the line as one option, beside the plain log-likelihood on the
same questions.

    python benchmarks/reading_ablation.py --model models/gemma-3-270m --questions data/prepared/eval.jsonl \
        --out reading.json [--n 300] [--adapter models/adapter] [--listed] [--own-line]
"""

import argparse
import random
import time

from mcgrpo.data.stats import question_kind
from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.generation import generate
from mcgrpo.loglik import VARIANT, loglik_rows, option_logprobs, rows_from_logprobs
from mcgrpo.metrics import compare, summarize
from mcgrpo.modeling import load_model
from mcgrpo.params import ModelParams
from mcgrpo.prompts import completion_text, render_prompt, stop_token_ids
from mcgrpo.rewards import LETTERS, OPEN_VARIANT, OPTION_VARIANT, answer_span, named_option
from mcgrpo.training import with_options_permuted

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", required=True, help="model.name: a local folder or a hub id")
parser.add_argument("--questions", required=True, help="JSONL of prepared records (context, question, options, answer)")
parser.add_argument("--out", required=True)
parser.add_argument("--n", type=int, default=0, help="a seeded sample of this many questions (0: all)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--adapter", default=None, help="a trained adapter (or fully fine-tuned model) to score instead")
parser.add_argument("--dtype", default="auto")
parser.add_argument("--tf32", action="store_true", help="float32 matmuls on TF32 tensor cores (model.tf32)")
parser.add_argument("--batch-size", type=int, default=16, help="option sequences per forward pass")
parser.add_argument("--listed", action="store_true",
                    help=f"also score the options after the {OPTION_VARIANT} prompt, in the data's order and "
                         "averaged over every rotation of the option list")
parser.add_argument("--own-line", action="store_true",
                    help=f"also score the options after the model's own {OPEN_VARIANT} line, split by whether the "
                         "line names one option")
parser.add_argument("--line-tokens", type=int, default=32, help="--own-line: new tokens of the written line")
args = parser.parse_args()

records = read_jsonl(args.questions)
if args.n:
    records = random.Random(args.seed).sample(records, min(args.n, len(records)))
if not any(r.get("context") for r in records):
    parser.error(f"{args.questions}: no record has a passage (context); nothing to ablate")
model, tokenizer, _ = load_model(ModelParams(name=args.model, dtype=args.dtype, tf32=args.tf32), adapter_dir=args.adapter)

result = {"model": args.model, "adapter": args.adapter, "questions": args.questions, "n": len(records)}
rows = {}
for condition, recs in (("with_article", records), ("without_article", [{**r, "context": ""} for r in records])):
    start = time.perf_counter()
    rows[condition] = loglik_rows(model, tokenizer, recs, args.batch_size, condition, question_kind)
    m = summarize(rows[condition])[VARIANT]
    result[condition] = {"accuracy": m["accuracy"], "accuracy_ci": [m["accuracy_ci_low"], m["accuracy_ci_high"]],
                         "accuracy_norm": m["accuracy_norm"], "seconds": round(time.perf_counter() - start, 1)}
    print(condition, result[condition])
gain = compare(rows["without_article"], rows["with_article"])[VARIANT]  # paired, on the same questions
result["reading_gain"] = gain["accuracy_delta"]
result["reading_gain_ci"] = [gain["accuracy_delta_ci_low"], gain["accuracy_delta_ci_high"]]
result["reading_gain_mcnemar"] = {k: gain[k] for k in ("fixed", "broken", "p_value")}
result["gold_letters"] = m["gold_letters"]
result["best_position_only_accuracy"] = max(m["gold_letters"].values())
if args.listed:
    start = time.perf_counter()
    n_options = {len(r["options"]) for r in records}
    if len(n_options) != 1:
        parser.error(f"--listed rotates the option list: every question needs the same number of options "
                     f"({args.questions} has {sorted(n_options)})")
    k = n_options.pop()
    totals = [[0.0] * k for _ in records]
    shown_first = [0] * k  # how often the option in each displayed position scored highest, over all rotations
    data_order = None
    for shift in range(k):
        order = [(i + shift) % k for i in range(k)]  # displayed position j shows original option order[j]
        shown = [with_options_permuted(r, order) for r in records]
        logps = option_logprobs(model, tokenizer, shown, args.batch_size,
                                context=lambda r: completion_text(r, OPTION_VARIANT))
        for total, lp in zip(totals, logps):
            for j, x in enumerate(lp):
                total[order[j]] += x
            shown_first[max(range(k), key=lp.__getitem__)] += 1
        if shift == 0:
            data_order = rows_from_logprobs(records, logps, "listed, data order", question_kind)
    averaged = rows_from_logprobs(records, totals, "listed, rotations averaged", question_kind)
    listed = {}
    for name, rows_ in (("data_order", data_order), ("rotations_averaged", averaged)):
        m = summarize(rows_)[VARIANT]
        listed[name] = {"accuracy": m["accuracy"], "accuracy_ci": [m["accuracy_ci_low"], m["accuracy_ci_high"]]}
    listed["highest_by_displayed_position"] = {LETTERS[j]: round(c / (k * len(records)), 4)
                                               for j, c in enumerate(shown_first)}
    versus = compare(rows["with_article"], averaged)[VARIANT]  # the listed prompt against the plain one, paired
    listed["rotations_averaged_minus_plain"] = versus["accuracy_delta"]
    listed["rotations_averaged_minus_plain_mcnemar"] = {key: versus[key] for key in ("fixed", "broken", "p_value")}
    listed["seconds"] = round(time.perf_counter() - start, 1)
    result["listed"] = listed
    print("listed", listed)
if args.own_line:
    start = time.perf_counter()
    prompts = [render_prompt(tokenizer, r, OPEN_VARIANT) for r in records]
    outputs = generate(model, tokenizer, prompts, batch_size=max(1, args.batch_size // 2),
                       max_new_tokens=args.line_tokens, desc=f"{OPEN_VARIANT} lines",
                       stop_ids=stop_token_ids(tokenizer, OPEN_VARIANT))
    lines = [answer_span(o["text"], OPEN_VARIANT) for o in outputs]
    after = [f"{completion_text(r, OPEN_VARIANT)} {line}\nSo the answer is:" for r, line in zip(records, lines)]
    contexts = dict(zip(map(id, records), after))  # by object: ids need not be unique in a user's file
    scored = rows_from_logprobs(records, option_logprobs(model, tokenizer, records, args.batch_size,
                                                         context=lambda r: contexts[id(r)]),
                                "after own line", question_kind)
    named = [named_option(line, r["options"]) for line, r in zip(lines, records)]

    def accuracy(rows_, which):
        picked = [row["correct"] for row, n in zip(rows_, named) if which(n)]
        return {"n": len(picked), "accuracy": round(sum(picked) / len(picked), 4) if picked else None}

    m = summarize(scored)[VARIANT]
    versus = compare(rows["with_article"], scored)[VARIANT]
    n_named = sum(n is not None for n in named)
    own = {"template": "prompt + ' ' + line + '\\nSo the answer is:' + ' <option>'",
           "accuracy": m["accuracy"], "accuracy_ci": [m["accuracy_ci_low"], m["accuracy_ci_high"]],
           "minus_plain": versus["accuracy_delta"],
           "minus_plain_mcnemar": {k: versus[k] for k in ("fixed", "broken", "p_value")},
           "named_one_rate": round(n_named / len(records), 4)}
    for subset, which in (("named_one", lambda n: n is not None), ("named_none_or_several", lambda n: n is None)):
        own[subset] = {"after_line": accuracy(scored, which), "plain": accuracy(rows["with_article"], which)}
    # on the lines read as one option: how often that reading is right, and how often the after-line score agrees
    read = [(n, r["answer"], row["pred"]) for n, r, row in zip(named, records, scored) if n is not None]
    own["named_one"]["as_read"] = round(sum(n == gold for n, gold, _ in read) / max(1, n_named), 4)
    own["named_one"]["after_line_agrees_with_read"] = round(sum(n == pred for n, _, pred in read) / max(1, n_named), 4)
    own["seconds"] = round(time.perf_counter() - start, 1)
    result["own_line"] = own
    print("own_line", own)
write_json(args.out, result)
print(f"reading gain {result['reading_gain']:+.4f} (McNemar p {result['reading_gain_mcnemar']['p_value']}); "
      f"best question-blind {result['best_position_only_accuracy']} -> {args.out}")
