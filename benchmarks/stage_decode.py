"""Why the baseline stage decodes slower than decode_variants.py: the stage's own generator on real prompts.

The whole-test-set baseline (H100, 2026-11-25) spent 2.34 s of GPU time decoding each batch of 128 x 256
tokens, 9.1 ms a step, where decode_variants.py's bare graph replays took 4.7 ms at the same cache length.
This builds one generator exactly as the eval stage does (static_generator_for over real RACE prompts of
both variants), then times the same batches under the conditions that differ between the two:
left-padded real prompts or unpadded random ids, the stage's check_every=32 or none, greedy or sampling.

    python benchmarks/stage_decode.py --race .bench/race_test.jsonl --tokenizer-texts .bench/race_train3000.jsonl \\
        --out $OUT/stage_decode.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mcgrpo.fileio import read_jsonl  # noqa: E402
from mcgrpo.generation import static_generator_for  # noqa: E402
from mcgrpo.modeling import build_tiny_model, load_model, question_texts  # noqa: E402
from mcgrpo.params import ModelParams  # noqa: E402
from mcgrpo.prompts import render_prompt  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--race", required=True)
parser.add_argument("--tokenizer-texts", required=True)
parser.add_argument("--preset", default="gemma-3-1b")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--new", type=int, default=256)
parser.add_argument("--out", required=True)
args = parser.parse_args()

model_dir = Path(f"/tmp/stage-decode-{args.preset}")
if not model_dir.exists():
    build_tiny_model(model_dir, preset=args.preset, tokenizer_texts=question_texts(read_jsonl(args.tokenizer_texts)),
                     tokenizer_vocab=32000)
model, tokenizer, _ = load_model(ModelParams(name=str(model_dir), backend="transformers", dtype="auto"))
records = read_jsonl(args.race)[: args.batch]
prompts = [render_prompt(tokenizer, r, v) for v in ("direct", "cot") for r in records]
static = static_generator_for(model, tokenizer, prompts, batch_size=args.batch, max_new_tokens=args.new, engine="static")
device = next(model.parameters()).device
enc = tokenizer(prompts[: args.batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
stop = list(model.generation_config.eos_token_id)
random_ids = torch.randint(10, 30000, enc["input_ids"].shape, device=device)
result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
          "max_length": static.max_length, "batch": args.batch, "prompt_tokens": enc["input_ids"].shape[1],
          "padding_share": round(1 - enc["attention_mask"].float().mean().item(), 3), "runs": {}}


def timed(name, ids, mask, check_every, temperature=0.0):
    static.check_every = check_every
    before = static.seconds() if device.type == "cuda" else None
    start = time.perf_counter()
    static.generate(ids, mask, max_new_tokens=args.new, eos_token_ids=stop, pad_token_id=tokenizer.pad_token_id,
                    temperature=temperature).tolist()
    wall = time.perf_counter() - start
    run = {"wall_s": round(wall, 3)}
    if before:
        after = static.seconds()
        run.update(prefill_s=round(after["prefill_s"] - before["prefill_s"], 3),
                   decode_s=round(after["decode_s"] - before["decode_s"], 3))
        run["decode_ms_per_step"] = round(1000 * run["decode_s"] / (args.new - 1), 2)
    result["runs"][name] = run
    print(name, run, flush=True)


timed("warm-up (compile)", enc["input_ids"], enc["attention_mask"], 32)
for _ in range(2):
    timed("real prompts, check_every 32", enc["input_ids"], enc["attention_mask"], 32)
    timed("real prompts, no checks", enc["input_ids"], enc["attention_mask"], 10**9)
    timed("random ids unpadded, no checks", random_ids, torch.ones_like(random_ids), 10**9)
    timed("random ids unpadded, check_every 32", random_ids, torch.ones_like(random_ids), 32)
timed("sampling warm-up", enc["input_ids"], enc["attention_mask"], 32, temperature=1.0)
timed("real prompts, sampling", enc["input_ids"], enc["attention_mask"], 32, temperature=1.0)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(result, indent=2))
