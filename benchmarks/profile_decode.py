"""Where a decode step's GPU time goes at Gemma 3 1B's shape (batch 128, 512-token prompts, static cache).

Runs a few eager StaticGenerator decode steps under torch.profiler and prints the top CUDA kernels.

    python benchmarks/profile_decode.py --out $OUT/profile_decode.txt
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mcgrpo.fast_generation import StaticGenerator  # noqa: E402
from mcgrpo.tiny import PRESETS  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--prompt", type=int, default=512)
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--out", required=True)
args = parser.parse_args()

from transformers import Gemma3ForCausalLM, Gemma3TextConfig  # noqa: E402

config = Gemma3TextConfig(**PRESETS["gemma-3-1b"], attn_implementation="sdpa")
model = Gemma3ForCausalLM(config).to("cuda", torch.bfloat16).eval()
ids = torch.randint(10, config.vocab_size, (args.batch, args.prompt), device="cuda")
generator = StaticGenerator(model, batch_size=args.batch, max_length=args.prompt + 64, compile=False)
with torch.inference_mode():
    generator.generate(ids, torch.ones_like(ids), max_new_tokens=4, eos_token_ids=[], pad_token_id=0)  # warm-up
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generator.generate(ids, torch.ones_like(ids), max_new_tokens=args.steps, eos_token_ids=[], pad_token_id=0)
table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
Path(args.out).write_text(table)
print(table)
