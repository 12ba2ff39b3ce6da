"""A model's generated answers per prompt variant and number of solved examples (shots), on one sample of questions.

For choosing a trained variant before spending GPU time on GRPO: accuracy, how often the answer is in format, the
answer positions (a pretrained model restating the first listed option shows here), and the question-blind level,
all from the eval stage's own routine (`answer_eval_set`, greedy) and `summarize`. Shots are drawn as `prepare`
draws them (`pick_shots`, by seed, from the train file).

    python benchmarks/base_variants.py --model models/gemma-3-270m --questions dev.jsonl --train train.jsonl \
        --n 100 --shots 0,3 --variants completion_option,completion_direct --out base_variants.json
"""

import argparse
import random
import time

from mcgrpo.data.loaders import pick_shots
from mcgrpo.evaluation import answer_eval_set
from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.metrics import summarize
from mcgrpo.modeling import load_model
from mcgrpo.params import EvalParams, ModelParams

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", required=True, help="model.name: a local folder or a hub id")
parser.add_argument("--questions", required=True, help="JSONL of records to answer (context, question, options, answer)")
parser.add_argument("--train", default=None, help="JSONL the shots are drawn from (needed when --shots has a non-zero)")
parser.add_argument("--out", required=True)
parser.add_argument("--n", type=int, default=100, help="a seeded sample of this many questions (0: all)")
parser.add_argument("--shots", default="0", help="comma-separated numbers of shots, e.g. 0,3")
parser.add_argument("--variants", default="completion_option,completion_direct")
parser.add_argument("--max-new-tokens", type=int, default=32)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--dtype", default="auto")
args = parser.parse_args()

shot_counts = [int(k) for k in args.shots.split(",")]
if any(shot_counts) and not args.train:
    parser.error("--shots asks for solved examples: give --train, the JSONL to draw them from")
records = read_jsonl(args.questions)
if args.n:
    records = random.Random(args.seed).sample(records, min(args.n, len(records)))
train = read_jsonl(args.train) if args.train else []
ep = EvalParams(mode="generate", variants=args.variants.split(","), batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens, seed=args.seed)
model, tokenizer, _ = load_model(ModelParams(name=args.model, dtype=args.dtype))

result = {"model": args.model, "questions": args.questions, "n": len(records), "max_new_tokens": args.max_new_tokens,
          "by_shots": {}}
keep = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "format_rate", "answered_rate", "position_only_accuracy",
        "pred_letters", "gold_letters", "mean_completion_tokens")
for k in shot_counts:
    shots, _ = pick_shots({"train": train}, k, args.seed)
    start = time.perf_counter()
    summary = summarize(answer_eval_set(model, tokenizer, records, ep, f"{k}-shot", shots))
    result["by_shots"][str(k)] = {"shot_ids": [s["id"] for s in shots], "seconds": round(time.perf_counter() - start, 1),
                                  "variants": {v: {key: m[key] for key in keep} for v, m in summary.items()}}
    for v, m in summary.items():
        print(f"{k}-shot {v}: accuracy {m['accuracy']} [{m['accuracy_ci_low']}, {m['accuracy_ci_high']}], "
              f"in format {m['format_rate']}, answers {m['pred_letters']}, question-blind {m['position_only_accuracy']}")
write_json(args.out, result)
print(f"-> {args.out}")
