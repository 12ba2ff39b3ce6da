"""Read saved predictions again with the current answer reading (`rewards.judge`), and compare the models.

When a variant's reading changes, the saved completions of a run can be read the new way without generating them
again: the base and fine-tuned rows of `data/predictions/*.jsonl` (evaluate's output) and a peer's
`predictions.jsonl` (benchmarks/trl_peer.py). For each model it reports accuracy, how often a line was read as an
answer, how many options the line touches (holds a content word of), and how often the answer is the longest or
the shortest option (RACE's right answer is the longest one for 0.306 of its test questions: a model can gain by
length alone, blind to the passage); each fine-tuned model is compared with the base on the same questions (paired
interval, McNemar p).

    python benchmarks/rejudge.py --variant completion_open --base data/predictions/baseline.jsonl \
        --tuned data/predictions/finetuned.jsonl [--peer peer/predictions.jsonl] [--max-tokens 32 --tokenizer DIR] \
        --out rejudged.json
"""

import argparse

from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.metrics import compare, summarize
from mcgrpo.rewards import LETTERS, answer_span, content_words, judge

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--variant", required=True)
parser.add_argument("--base", required=True, help="prediction rows with model 'baseline' (or the base's own file)")
parser.add_argument("--tuned", required=True, help="prediction rows of the fine-tuned model")
parser.add_argument("--peer", default=None, help="a peer's prediction rows (benchmarks/trl_peer.py)")
parser.add_argument("--max-tokens", type=int, default=0, help="read only each completion's first N tokens (0: all)")
parser.add_argument("--tokenizer", default=None, help="the model folder whose tokenizer counts --max-tokens")
parser.add_argument("--out", required=True)
args = parser.parse_args()
if args.max_tokens and not args.tokenizer:
    parser.error("--max-tokens counts tokens: give --tokenizer")
tokenizer = None
if args.tokenizer:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)


def reread(path: str, model: str) -> list[dict]:
    rows = [r for r in read_jsonl(path) if r["variant"] == args.variant]
    if not rows:
        raise SystemExit(f"{path}: no {args.variant} rows")
    out = []
    for r in rows:
        text = r["completion"]
        if args.max_tokens:
            text = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:args.max_tokens])
        said = content_words(answer_span(text, args.variant))
        touched = sum(bool(said & content_words(o)) for o in r["options"])
        out.append({**r, **judge(text, r["answer"], r["n_options"], args.variant, r["options"]),
                    "model": model, "options_touched": touched})
    return out


def length_rank_share(rows: list[dict], pick) -> float:
    """Share of all rows whose answer has the length (characters) `pick` (max or min) takes over its options."""
    def lengths(r):
        return [len(o) for o in r["options"]]
    return round(sum(r["pred"] is not None and lengths(r)[LETTERS.index(r["pred"])] == pick(lengths(r))
                     for r in rows) / len(rows), 4)


def describe(rows: list[dict]) -> dict:
    m = summarize(rows)[args.variant]
    n = len(rows)
    answered = [r for r in rows if r["pred"] is not None]
    return {"n": n, "accuracy": m["accuracy"], "accuracy_ci": [m["accuracy_ci_low"], m["accuracy_ci_high"]],
            "answered_rate": round(len(answered) / n, 4),
            "accuracy_per_answered": round(sum(r["correct"] for r in answered) / max(len(answered), 1), 4),
            "finished_rate": round(sum(bool(r.get("finished")) for r in rows) / n, 4),
            "lines_touching_2_or_more_options": round(sum(r["options_touched"] >= 2 for r in rows) / n, 4),
            "answers_the_longest_option": length_rank_share(rows, max),
            "answers_the_shortest_option": length_rank_share(rows, min)}


base = reread(args.base, "baseline")
longest = [LETTERS[max(range(len(r["options"])), key=lambda i: len(r["options"][i]))] for r in base]  # first of ties
result = {"variant": args.variant, "max_tokens": args.max_tokens or None,
          "always_the_longest_option_accuracy": round(sum(p == r["answer"] for p, r in zip(longest, base)) / len(base), 4),
          "base": describe(base)}
for name, path in (("tuned", args.tuned), ("peer", args.peer)):
    if path:
        rows = reread(path, "finetuned")
        c = compare(base, rows)[args.variant]
        result[name] = {**describe(rows), "change": c["accuracy_delta"],
                        "change_ci": [c["accuracy_delta_ci_low"], c["accuracy_delta_ci_high"]],
                        "mcnemar": {k: c[k] for k in ("fixed", "broken", "p_value")}}
write_json(args.out, result)
for name in ("base", "tuned", "peer"):
    if name in result:
        print(name, result[name])
