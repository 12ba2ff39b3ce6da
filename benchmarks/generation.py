"""Decode speed at Gemma 3 1B's shape: HF `generate` (dynamic cache), HF `generate` with a compiled static
cache, and the project's StaticGenerator, side by side in one process on the same inputs.

Random-init Gemma3ForCausalLM with the exact 1B config, bf16, sdpa; random prompt tokens; no EOS, so
every row decodes the full length. Each engine gets one warm-up call (compilation; timed and reported
apart), then timed calls. Greedy outputs of StaticGenerator are compared with HF `generate`'s.

    python benchmarks/generation.py --batch 128 --prompt 512 --new 256 --out $OUT/generation.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from common import DEVICE, random_model, sync

from mcgrpo.fast_generation import StaticGenerator, use_grouped_attention

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--prompt", type=int, default=512)
parser.add_argument("--new", type=int, default=256)
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--engines", default="hf_dynamic,hf_static,static_generator,static_generator_sampling",
                    help="also static_generator_unfused / _flex / _compiled_prefill / _flex_compiled_prefill: "
                         "generators with other settings (see STATIC)")
parser.add_argument("--preset", default="gemma-3-1b")
parser.add_argument("--compile-prefill", action="store_true", help="StaticGenerator compiles its prefill too")
parser.add_argument("--out", required=True)
args = parser.parse_args()

model = random_model(args.preset)
config = model.config
model.generation_config.eos_token_id = None  # no early stop: every row runs the full length
model.generation_config.pad_token_id = 0
ids = torch.randint(10, config.vocab_size, (args.batch, args.prompt), device=DEVICE)
mask = torch.ones_like(ids)
results = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "batch": args.batch,
           "compile_prefill": args.compile_prefill,
           "prompt_tokens": args.prompt, "new_tokens": args.new, "engines": {}}
print(json.dumps({k: v for k, v in results.items() if k != "engines"}), flush=True)


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def record(name, fn, static=None):
    """Time fn's warm-up call and args.repeats more; for a StaticGenerator (static), also its GPU seconds in prefill
    and in decoding over the timed calls."""
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, warmup = timed(fn)
    before = static.seconds() if static is not None and DEVICE == "cuda" else None
    runs = [timed(fn) for _ in range(args.repeats)]
    out, seconds = runs[-1]
    best = min(s for _, s in runs)
    new = out.shape[0] * out.shape[1]
    results["engines"][name] = {"warmup_s": round(warmup, 1), "seconds": [round(s, 3) for _, s in runs],
                                "new_tok_per_s": round(new / best), "ms_per_step": round(1000 * best / out.shape[1], 2),
                                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None}
    if before is not None:  # where a call's time goes: the prefill, and the decode steps (ms each)
        after = static.seconds()
        prefill, decode = (after[k] - before[k] for k in ("prefill_s", "decode_s"))
        results["engines"][name].update(prefill_s_per_call=round(prefill / args.repeats, 3),
                                        decode_ms_per_step=round(1000 * decode / args.repeats / (out.shape[1] - 1), 3))
    print(name, json.dumps(results["engines"][name]), flush=True)
    return out


# StaticGenerator engines: name -> its settings (each its own generator, compiled on first use)
STATIC = {"static_generator": {}, "static_generator_sampling": {},
          "static_generator_unfused": {"fuse_projections": False},
          "static_generator_flex": {"decode_attention": "flex"},
          "static_generator_compiled_prefill": {"compile_prefill": True},
          "static_generator_flex_compiled_prefill": {"decode_attention": "flex", "compile_prefill": True}}
outputs, generators = {}, {}
engines = args.engines.split(",")  # run in the order given: a run cut by a time limit keeps the first ones
with torch.inference_mode():
    for name in engines:
        if name.startswith("hf_"):
            model.set_attn_implementation("sdpa")  # the plain alternative, even after the generator switched it
            static_cache = {"cache_implementation": "static"} if name == "hf_static" else {}
            outputs[name] = record(name, lambda: model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=args.new, do_sample=False, top_k=None,
                **static_cache)[:, args.prompt:])
            continue
        if name not in STATIC:
            raise SystemExit(f"unknown engine {name!r} (known: hf_dynamic, hf_static, {', '.join(STATIC)})")
        settings = {"compile_prefill": args.compile_prefill, **STATIC[name]}
        key = "static_generator" if name == "static_generator_sampling" else name  # sampling reuses the default one
        if key not in generators:
            t = time.perf_counter()
            generators[key] = StaticGenerator(model, batch_size=args.batch, max_length=args.prompt + args.new,
                                              check_every=args.new, **settings)  # never stops early: skip the syncs
            results[f"{key}_setup_s"] = round(time.perf_counter() - t, 1)
        generator = generators[key]
        use_grouped_attention(model, settings.get("decode_attention", "matmul"))  # this generator's attention
        temperature = 1.0 if name == "static_generator_sampling" else 0.0
        out = record(name, lambda: generator.generate(ids, mask, max_new_tokens=args.new, eos_token_ids=[],
                                                      pad_token_id=0, temperature=temperature), generator)
        if not temperature:
            outputs[name] = out

base = results["engines"].get("hf_dynamic", {}).get("new_tok_per_s")
static = results["engines"].get("hf_static", {}).get("new_tok_per_s")
for name, r in results["engines"].items():
    if base:
        r["vs_hf_dynamic"] = round(r["new_tok_per_s"] / base, 2)
    if static:
        r["vs_hf_static"] = round(r["new_tok_per_s"] / static, 2)
reference = next((n for n in ("hf_dynamic", "hf_static") if n in outputs), None)
for name in [n for n in outputs if n in STATIC and reference]:  # bf16: rounding differs, so rows drift apart
    ref, ours = outputs[reference], outputs[name]
    same = (ref == ours[:, :ref.shape[1]])
    first_diff = torch.where(same.all(1), ref.shape[1], (~same).float().argmax(1))
    results.setdefault("greedy_vs_hf", {})[name] = {"reference": reference, "identical_rows": int(same.all(1).sum()),
                                                    "rows": ref.shape[0],
                                                    "mean_matching_prefix": round(first_diff.float().mean().item(), 1)}
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(results, indent=2))
print(json.dumps(results, indent=2))
