"""Where a decode step's GPU time goes at Gemma 3 1B's shape (batch 128, 512-token prompts, static cache).

Runs a few eager StaticGenerator decode steps under torch.profiler and prints the top CUDA kernels.

    python benchmarks/profile_decode.py --out $OUT/profile_decode.txt
"""

import argparse
from pathlib import Path

import torch
from common import DEVICE, random_model

from mcgrpo.fast_generation import StaticGenerator

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--prompt", type=int, default=512)
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--preset", default="gemma-3-1b", help="tiny: a CPU dry run of this script (CPU ops only)")
parser.add_argument("--out", required=True)
args = parser.parse_args()

model = random_model(args.preset)
ids = torch.randint(10, model.config.vocab_size, (args.batch, args.prompt), device=DEVICE)
generator = StaticGenerator(model, batch_size=args.batch, max_length=args.prompt + 64, compile=False)
with torch.inference_mode():
    generator.generate(ids, torch.ones_like(ids), max_new_tokens=4, eos_token_ids=[], pad_token_id=0)  # warm-up
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        generator.generate(ids, torch.ones_like(ids), max_new_tokens=args.steps, eos_token_ids=[], pad_token_id=0)
table = prof.key_averages().table(sort_by="cuda_time_total" if DEVICE == "cuda" else "cpu_time_total", row_limit=25,
                                  max_name_column_width=60)
Path(args.out).write_text(table)
print(table)
