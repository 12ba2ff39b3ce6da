"""Does the model read the passage? Option log-likelihood with the article and without it, on the same questions.

Accuracy with the article minus accuracy without it is what reading adds; a gain from training that this check
does not show, or a base model that gains little from the article, says the model chooses from the question and the
options alone (their wording, their length, how likely each is as an answer). The best question-blind policy
(always the most common gold position) is reported beside it: a generated-answer gain above it needs reading.

    python benchmarks/reading_ablation.py --model models/gemma-3-270m --questions data/prepared/eval.jsonl \
        --out reading.json [--n 300] [--adapter models/adapter]
"""

import argparse
import random
import time
from collections import Counter

from mcgrpo.data.stats import question_kind
from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.loglik import loglik_rows
from mcgrpo.metrics import bootstrap_ci, mcnemar_exact
from mcgrpo.modeling import load_model
from mcgrpo.params import ModelParams

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
args = parser.parse_args()

records = read_jsonl(args.questions)
if args.n:
    records = random.Random(args.seed).sample(records, min(args.n, len(records)))
if not any(r.get("context") for r in records):
    parser.error(f"{args.questions}: no record has a passage (context); nothing to ablate")
model, tokenizer, _ = load_model(ModelParams(name=args.model, dtype=args.dtype, tf32=args.tf32), adapter_dir=args.adapter)

result = {"model": args.model, "adapter": args.adapter, "questions": args.questions, "n": len(records)}
correct = {}
for condition, recs in (("with_article", records), ("without_article", [{**r, "context": ""} for r in records])):
    start = time.perf_counter()
    rows = loglik_rows(model, tokenizer, recs, args.batch_size, condition, question_kind)
    correct[condition] = [r["correct"] for r in rows]
    accuracy = sum(correct[condition]) / len(rows)
    result[condition] = {"accuracy": round(accuracy, 4), "accuracy_ci": bootstrap_ci(correct[condition]),
                         "accuracy_norm": round(sum(r["correct_norm"] for r in rows) / len(rows), 4),
                         "seconds": round(time.perf_counter() - start, 1)}
    print(condition, result[condition])
gold = Counter(r["answer"] for r in records)
result["reading_gain"] = round(result["with_article"]["accuracy"] - result["without_article"]["accuracy"], 4)
result["reading_gain_mcnemar"] = mcnemar_exact(correct["without_article"], correct["with_article"])
result["best_position_only_accuracy"] = round(max(gold.values()) / len(records), 4)
result["gold_letters"] = {k: round(v / len(records), 4) for k, v in sorted(gold.items())}
write_json(args.out, result)
print(f"reading gain {result['reading_gain']:+.4f} (McNemar p {result['reading_gain_mcnemar']['p_value']}); "
      f"best question-blind {result['best_position_only_accuracy']} -> {args.out}")
