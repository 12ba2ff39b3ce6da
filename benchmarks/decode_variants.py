"""Where the compiled decode step's time goes, and what changes it (Gemma 3 1B shape, batch 128).

1. Profile: the StaticGenerator decode step as inductor compiled it, called directly (the kernels its
   CUDA graph replays), a few steps under torch.profiler: GPU time per step by kernel, against the step
   time measured with the graph. If the kernel sum is close to the step time the GPU is the limit; if
   it is far below, the host is.
2. Variants, each compiled afresh and timed over full generate calls, and over bare graph replays:
   - grouped: the shipped attention (grouped-query; matmuls for one-token decode steps, SDPA otherwise) and
     the shipped layers (q/k/v and gate/up fused);
   - unfused: grouped, with HF's own layers (q/k/v and gate/up as separate matmuls);
   - flex: grouped, with FlexAttention for the decode steps (decode_attention="flex");
   - grouped_sdpa: the same but SDPA for decode steps too (PyTorch picks cuDNN's kernel on the H100);
   - max_autotune: grouped, compiled with mode="max-autotune-no-cudagraphs" (Triton matmuls tuned per shape).

    python benchmarks/decode_variants.py --out $OUT/decode_variants.json
"""

import argparse
import json
import time
from collections import defaultdict

import torch
from common import DEVICE, random_model, replay_ms, sync

from mcgrpo.fast_generation import StaticGenerator, grouped_query_and_mask, use_grouped_attention
from mcgrpo.fileio import write_json

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--prompt", type=int, default=512)
parser.add_argument("--new", type=int, default=256)
parser.add_argument("--variants", default="grouped,grouped_sdpa")
parser.add_argument("--profile-steps", type=int, default=8)
parser.add_argument("--budget-s", type=float, default=500, help="skip variants once this much time has passed")
parser.add_argument("--preset", default="gemma-3-1b")
parser.add_argument("--out", required=True)
args = parser.parse_args()
started = time.perf_counter()

from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    q, mask = grouped_query_and_mask(query, key, attention_mask, is_causal)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(query.shape).transpose(1, 2).contiguous(), None


AttentionInterface.register("grouped_sdpa", grouped_sdpa)
AttentionMaskInterface.register("grouped_sdpa", sdpa_mask)

model = random_model(args.preset)
config = model.config
ids = torch.randint(10, config.vocab_size, (args.batch, args.prompt), device=DEVICE)
mask = torch.ones_like(ids)
results = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
           "batch": args.batch, "prompt_tokens": args.prompt, "new_tokens": args.new, "variants": {}}


def save():
    write_json(args.out, results)


def generator_for(variant):
    torch._dynamo.reset()  # every variant compiles from scratch
    if variant == "grouped_sdpa":
        model.set_attn_implementation("grouped_sdpa")
    else:
        use_grouped_attention(model)
    mode = "max-autotune-no-cudagraphs" if variant == "max_autotune" else None
    return StaticGenerator(model, batch_size=args.batch, max_length=args.prompt + args.new, check_every=args.new,
                           grouped_attention=False, compile=DEVICE == "cuda", compile_mode=mode,
                           fuse_projections=variant != "unfused",
                           decode_attention="flex" if variant == "flex" else "matmul")


def run(generator, new):
    sync()
    t = time.perf_counter()
    out = generator.generate(ids, mask, max_new_tokens=new, eos_token_ids=[1], pad_token_id=0)  # 1: never sampled
    queued = time.perf_counter() - t
    sync()
    return out, time.perf_counter() - t, queued




def profile_loop(generator, steps=32):
    """Host and GPU time of whole generate steps (graph replay plus per-token bookkeeping), by op."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    sync()
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        generator.generate(ids, mask, max_new_tokens=steps + 1, eos_token_ids=[1], pad_token_id=0)
        sync()
    wall = time.perf_counter() - t
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    return {"wall_ms_per_step": round(1000 * wall / steps, 3),
            "host_top": [{"op": e.key[:60], "self_cpu_us_per_step": round(e.self_cpu_time_total / steps, 1),
                          "gpu_us_per_step": round(e.self_device_time_total / steps, 1), "calls_per_step": e.count / steps}
                         for e in rows]}


def profile_step(generator, steps):
    """GPU time per decode step by kernel: the compiled step called directly, outside its CUDA graph."""
    from torch.profiler import ProfilerActivity, profile

    generator.set_cache_position(args.prompt)  # every step writes the same slot, inside the cache
    generator.greedy_step()
    sync()
    with profile(activities=[ProfilerActivity.CUDA] if DEVICE == "cuda" else [ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            generator.greedy_step()
        sync()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if DEVICE == "cuda" and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        per_kernel[event.name][0] += event.device_time_total if DEVICE == "cuda" else event.cpu_time_total
        per_kernel[event.name][1] += 1
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:12]
    return {"kernel_ms_per_step": round(sum(t for t, _ in per_kernel.values()) / 1000 / steps, 3),
            "kernels_per_step": round(sum(n for _, n in per_kernel.values()) / steps, 1),
            "top": [{"kernel": name[:90], "us_per_step": round(t / steps, 1), "calls_per_step": n / steps}
                    for name, (t, n) in top]}


with torch.inference_mode():
    for variant in args.variants.split(","):
        if time.perf_counter() - started > args.budget_s:
            results["variants"][variant] = "skipped: time budget"
            continue
        generator = generator_for(variant)
        _, warmup, _ = run(generator, 16)  # compiles and captures the graph
        runs = [run(generator, args.new) for _ in range(2)]
        best = min(s for _, s, _ in runs)
        out = runs[-1][0]
        results["variants"][variant] = {
            "warmup_call_s": round(warmup, 1), "seconds": [round(s, 3) for _, s, _ in runs],
            # time for the host to queue every step; close to the total means the host is the limit
            "host_queue_s": [round(h, 3) for _, _, h in runs],
            "ms_per_step": round(1000 * best / out.shape[1], 2), "new_tok_per_s": round(out.numel() / best),
            "replay_only_ms": replay_ms(generator, cache_position=args.prompt),
            "loop_profile": profile_loop(generator, steps=min(32, args.new - 1)),  # within the cache
            "profile": profile_step(generator, args.profile_steps)}
        print(variant, json.dumps(results["variants"][variant]), flush=True)
        save()
        del generator
save()
print(json.dumps(results, indent=2))
