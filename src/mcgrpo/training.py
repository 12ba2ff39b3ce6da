"""GRPO with LoRA through TRL's GRPOTrainer, configured from params; curves go to dvclive.

Checkpoints live in a DVC `persist: true` folder. A rerun with the same params and data resumes
from the last complete checkpoint; any change starts afresh, so a stale run is never continued.
"""

import csv
import functools
import importlib.util
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import torch

from mcgrpo.errors import UserError
from mcgrpo.fileio import atomic_path, safetensors_problem, sha256_file, write_json
from mcgrpo.params import LEARNED_REWARD
from mcgrpo.prompts import is_chat, stop_token_ids, trainer_prompt
from mcgrpo.reward_model import load_learned_reward
from mcgrpo.rewards import BASE_CHOICE, LETTERS, PICK_VARIANT, REWARDS

RUN_MARKER = "run.json"
RUN_SUMMARY = "summary.json"  # the finished run's summary, kept beside its checkpoints for a later re-export


def grpo_row(record: dict, variant: str, shots: list[dict] = ()) -> dict:
    """One training row: the prompt as TRL takes it (a conversation for chat variants, which it templates; text for
    completion variants, which it tokenizes with <bos>) plus the columns the rewards read.

    TRL hands every column but "prompt" to the reward functions: `variant` says which part of a completion is
    judged (rewards.answer_span); the learned reward reads the passage, question and options.
    """
    row = {"prompt": trainer_prompt(record, variant, shots), "answer": record["answer"],
           "n_options": len(record["options"]), "variant": variant, "context": record["context"],
           "question": record["question"], "options": record["options"]}
    if BASE_CHOICE in record:  # an option's text: it stays right however the options are ordered
        row[BASE_CHOICE] = record[BASE_CHOICE]
    return row


def with_base_choices(model, tokenizer, records: list[dict], batch_size: int = 64) -> tuple[list[dict], float]:
    """The records with the `base_choice` column the base_choice reward reads: the option the model, before any
    training, gives the highest log-likelihood as the answer (loglik.option_logprobs, the baseline's scoring);
    and how often that choice is the gold answer. batch_size counts option sequences, as in option_logprobs."""
    from mcgrpo.loglik import option_logprobs

    was_training = model.training
    model.eval()
    try:
        scores = option_logprobs(model, tokenizer, records, batch_size)
    finally:
        model.train(was_training)
    out = [{**r, BASE_CHOICE: r["options"][max(range(len(s)), key=s.__getitem__)]} for r, s in zip(records, scores)]
    agree = sum(r[BASE_CHOICE] == r["options"][LETTERS.index(r["answer"])] for r in out) / max(len(out), 1)
    return out, agree


def with_options_permuted(record: dict, order: list[int]) -> dict:
    """The record with its options shown in `order` (old positions, new first); the answer letter follows its
    option."""
    return {**record, "options": [record["options"][i] for i in order],
            "answer": LETTERS[order.index(LETTERS.index(record["answer"]))]}


def shuffle_options_per_row(rows: dict, variant: str, shots: list[dict]) -> dict:
    """A datasets transform (a batch of rows in, the same rows out) that shows each row's options in a fresh
    random order and re-renders its prompt.

    TRL's sampler repeats each question num_generations times (its GRPO group), and every copy is fetched as its
    own row, so each completion of a group sees its own order. A choice made by position alone ("always the last
    option") is then right for some completions of a group and wrong for others, and its advantage averages out
    within the group; only picking the right option by its content is rewarded every time. Draws come from
    torch's global RNG, which the trainer seeds and its checkpoints restore.
    """
    out = {name: [] for name in rows}
    for i in range(len(rows["prompt"])):
        record = {name: rows[name][i] for name in ("context", "question", "options", "answer", BASE_CHOICE)
                  if name in rows}
        order = torch.randperm(len(record["options"])).tolist()
        for name, value in grpo_row(with_options_permuted(record, order), variant, shots).items():
            out[name].append(value)
    return out


def grpo_dataset(records: list[dict], variant: str, shots: list[dict] = (), option_order: str = "given"):
    """The training set as TRL takes it (see grpo_row). option_order `per_completion` shows each completion its
    question's options in a random order (see shuffle_options_per_row); `given` keeps the data's order."""
    from datasets import Dataset

    dataset = Dataset.from_list([grpo_row(r, variant, shots) for r in records])
    if option_order == "given":
        return dataset
    return dataset.with_transform(functools.partial(shuffle_options_per_row, variant=variant, shots=list(shots)))


# TrainParams fields that are the project's own, not GRPOConfig's, though a name may match one of TRL's
# (use_vllm: decided by rollout_engine, which checks vllm is installed; reward_weights: a dict here, a list there).
NOT_GRPO_FIELDS = {"variant", "option_order", "finetune", "lora", "rollout_engine", "grouped_attention",
                   "compile_layers", "cudnn_attention", "shared_prompts", "shared_prompt_attention",
                   "merged_rollouts", "num_processes", "accelerate_config", "use_vllm", "reward_weights"}


def grpo_config(tp, output_dir, bf16: bool, engine: str = "hf"):
    """TRL's config from train params: every TrainParams field GRPOConfig has, by name, and the settings the
    project decides (rollout engine, reward weights in TRL's list form, precision, device, logging).
    `engine` is the resolved rollout engine (see rollout_engine)."""
    import dataclasses

    from trl import GRPOConfig

    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    shared = {name: getattr(tp, name) for name in type(tp).model_fields if name in trl_fields - NOT_GRPO_FIELDS}
    return GRPOConfig(
        output_dir=str(output_dir), **shared,
        reward_weights=[w for w in tp.reward_weights.values() if w], use_vllm=engine == "vllm",
        cache_implementation="static" if engine == "hf_static" else None,
        use_transformers_continuous_batching=engine == "hf_continuous",
        bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to="none", log_completions=False,
        # TRL's own rollouts sample with torch.multinomial, which fails with a device-side assert on a NaN/inf logit
        generation_kwargs={"remove_invalid_values": True},
    )


# --- rollouts ----------------------------------------------------------------------------------------


def rollout_engine(tp, backend: str) -> str:
    """The engine that samples this run's completions: vllm, fast, hf, hf_static or hf_continuous."""
    if tp.use_vllm:
        if importlib.util.find_spec("vllm") is not None:
            if tp.option_order == "per_completion":  # TRL's vLLM rollouts sample a group from its first prompt only
                raise UserError("train.option_order=per_completion gives each completion of a group its own prompt, "
                                "and TRL's vLLM rollouts generate a whole group from its first prompt: set "
                                "train.use_vllm to false, or train.option_order to given")
            return "vllm"
        print("warning: train.use_vllm is true but vllm is not installed; rollouts use train.rollout_engine "
              f"({tp.rollout_engine}) instead")
    if tp.variant == PICK_VARIANT and backend != "transformers":  # params.py refuses the other engines already
        raise UserError(f"train.variant={PICK_VARIANT} needs the project's rollouts, which run under the transformers "
                        f"backend only (model.backend is {backend}): set model.backend to transformers")
    if tp.rollout_engine == "auto":
        return "fast" if backend == "transformers" and tp.top_p >= 1 else "hf"
    if tp.rollout_engine == "fast" and backend != "transformers":
        raise UserError(f"train.rollout_engine=fast needs the transformers backend (model.backend is {backend}); "
                        "set train.rollout_engine to auto or hf, or model.backend to transformers")
    return tp.rollout_engine


def longest_prompt_tokens(tokenizer, records: list[dict], variant: str, shots: list[dict] = ()) -> int:
    """Tokens in the longest training prompt, as TRL tokenizes it (sizes the rollout KV cache once)."""
    prompts = [trainer_prompt(r, variant, shots) for r in records]
    if is_chat(variant):
        return max(len(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]) for m in prompts)
    return max(map(len, tokenizer(prompts)["input_ids"]))


def stop_at_variant_end(model, tokenizer, variant: str) -> None:
    """Make the variant's stop tokens (a completion prompt's line end) end rollouts: TRL reads the model's
    eos ids once, for generation and for the completion mask, so nothing after the answer is trained on."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    model.generation_config.eos_token_id = sorted(set(eos) | set(stop_token_ids(tokenizer, variant)))


class FastRollouts:
    """TRL `rollout_func`: the policy samples its completions through StaticGenerator.

    TRL's own rollouts call `generate` on the policy in train mode, and with gradient checkpointing on,
    transformers then drops the KV cache ("Caching is incompatible with gradient checkpointing"): every
    new token re-runs the whole sequence. Here the policy samples in eval mode through a static KV cache
    and one compiled decode step (a CUDA graph on GPU), built on the first call and replayed on every
    later one. The optimizer updates the LoRA weights in place, so the graph always reads the current
    policy: with `merged` (train.merged_rollouts), through merged copies of the LoRA layers refreshed at the
    start of every rollout (fast_generation.merged_twin). Sampling is exact (Gumbel-max at TRL's temperature,
    no top-p/top-k) and draws from torch's global RNG, which the trainer's checkpoints save and restore.
    answers: prompt -> the token lists its completions must be one of (completion_pick; see answers_by_prompt).
    The rollouts run the generator's grouped attention within their calls whatever train.grouped_attention sets for
    the training forward: HF's sdpa in a decode step copies K/V per query head and runs cuDNN's 64-row tiles for 4
    query rows (a profiled GRPO step on an H200: ~0.6 s of a 1.5 s rollout; benchmarks/README.md).
    """

    def __init__(self, max_prompt_tokens: int, merged: bool = True, answers=None,
                 pad_to_multiple_of: int | None = None):
        self.pad_to_multiple_of = pad_to_multiple_of  # the prompts' padding, as TRL's (train.pad_to_multiple_of)
        extra = -max_prompt_tokens % pad_to_multiple_of if pad_to_multiple_of else 0
        self.max_prompt_tokens = max_prompt_tokens + extra
        self.merged = merged
        self.answers = answers
        self.generator = None
        self.seconds = []  # wall time of each call (it ends reading the tokens back, so the GPU work is in it)

    def __call__(self, prompts: list, trainer) -> dict:
        from mcgrpo.constrained import answer_tensor
        from mcgrpo.fast_generation import StaticGenerator
        from mcgrpo.generation import left_pad
        from mcgrpo.patches import input_grad_hooks_removed, rollout_settings, tokenize_prompts

        start = time.perf_counter()
        prompt_ids = tokenize_prompts(trainer, prompts)
        settings = rollout_settings(trainer)
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        device = trainer.accelerator.device
        pad = settings["pad_token_id"]
        input_ids, attention_mask = left_pad(prompt_ids, pad, multiple=self.pad_to_multiple_of)
        need = input_ids.shape[1] + settings["max_completion_length"]
        if self.generator is None or len(prompt_ids) > self.generator.batch_size or need > self.generator.max_length:
            if self.generator is not None:
                print(f"warning: rollout batch {len(prompt_ids)} x {need} tokens outgrew the rollout cache; "
                      "rebuilding it (and recompiling)")
            self.generator = StaticGenerator(
                model, batch_size=len(prompt_ids), max_length=max(need, self.max_prompt_tokens + settings["max_completion_length"]),
                merge_lora=self.merged)
        answers = None if self.answers is None else \
            answer_tensor([self.answers[p] for p in prompts], settings["max_completion_length"], device)
        was_training = model.training
        model.eval()
        try:
            with input_grad_hooks_removed(model), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(trainer.args.bf16)):
                new_tokens = self.generator.generate(
                    input_ids.to(device), attention_mask.to(device), max_new_tokens=settings["max_completion_length"],
                    eos_token_ids=settings["eos_token_ids"], pad_token_id=pad, temperature=settings["temperature"],
                    answers=answers).tolist()
        finally:
            model.train(was_training)
        eos = set(settings["eos_token_ids"])
        # Keep each completion up to and including its first EOS, as TRL's completion mask does.
        completion_ids = [ids[:next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))] for ids in new_tokens]
        self.seconds.append(time.perf_counter() - start)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def fast_rollouts(tokenizer, records: list[dict], tp, shots: list[dict] = ()) -> FastRollouts:
    """The fast rollouts for a run on `records` (train.merged_rollouts), constrained to the options where
    train.variant is completion_pick."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental"; TRL is pinned
    answers = answers_by_prompt(tokenizer, records, tp.variant, shots) if tp.variant == PICK_VARIANT else None
    return FastRollouts(longest_prompt_tokens(tokenizer, records, tp.variant, shots), tp.merged_rollouts, answers,
                        tp.pad_to_multiple_of)


def answers_by_prompt(tokenizer, records: list[dict], variant: str, shots: list[dict] = ()) -> dict:
    """completion_pick's rollout constraint: each training prompt (as TRL hands it to the rollouts) -> the token lists
    its answer must be one of. The prompt shows no options, so shuffling them (train.option_order) leaves it as it
    is; two questions with the same prompt (one article, one fill-in stem) may answer with either's options."""
    from mcgrpo.constrained import answer_choices

    table = {}
    for record in records:
        choices = table.setdefault(trainer_prompt(record, variant, shots), [])
        choices += [c for c in answer_choices(tokenizer, record) if c not in choices]
    return table


def gpu_clock() -> float:
    """time.perf_counter() once the GPU has finished its queued work, so intervals hold the GPU's time."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepPhases:
    """Where each optimizer step's time goes, on this process: rollouts (sampling), rewards and reference (rewards,
    advantages and TRL's no-grad log-prob passes), policy forward/backward (the rest of the step's training_step
    calls), and the optimizer step, each measured with gpu_clock. `attach` puts the timers on a trainer."""

    PHASES = ("rollouts", "rewards_and_reference", "policy_forward_backward", "optimizer")

    def __init__(self):
        self.steps, self._current = [], {}

    def attach(self, trainer) -> None:
        from transformers import TrainerCallback

        from mcgrpo.patches import time_trainer_method

        for method in ("_generate", "_generate_and_score_completions", "training_step"):
            time_trainer_method(trainer, method, self._add, gpu_clock)
        phases = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                phases._optimizer_start = gpu_clock()

            def on_optimizer_step(self, args, state, control, **kwargs):
                phases._add("optimizer", gpu_clock() - phases._optimizer_start)

            def on_step_end(self, args, state, control, **kwargs):
                phases.steps.append(phases._current)
                phases._current = {}

        trainer.add_callback(Callback())

    def _add(self, name: str, seconds: float) -> None:
        self._current[name] = self._current.get(name, 0.0) + seconds

    def per_step(self) -> list[dict]:
        """Seconds per phase of each step of this process."""
        return [{"rollouts": t.get("_generate", 0.0),
                 "rewards_and_reference": t.get("_generate_and_score_completions", 0.0) - t.get("_generate", 0.0),
                 "policy_forward_backward": t.get("training_step", 0.0) - t.get("_generate_and_score_completions", 0.0),
                 "optimizer": t.get("optimizer", 0.0)} for t in self.steps]

    def mean(self, first: int = 0) -> dict | None:
        """Mean seconds per phase over steps[first:] of this process (None before any step)."""
        parts = self.per_step()[first:]
        if not parts:
            return None
        return {name: round(sum(p[name] for p in parts) / len(parts), 3) for name in self.PHASES}

    def last10(self) -> dict | None:
        return self.mean(first=-10)


# --- several processes: `accelerate launch`, one process per GPU -----------------------------------


def is_launched_worker() -> bool:
    """True inside a process started by `accelerate launch` / torchrun (they set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerate_command(tp, script: str) -> list[str]:
    """The command that reruns the train stage script as tp.num_processes data-parallel workers."""
    config = Path(tp.accelerate_config)
    if not config.exists():
        raise UserError(f"train.accelerate_config={tp.accelerate_config!r}: file not found; use "
                        "configs/accelerate/ddp.yaml (DDP) or configs/accelerate/zero2.yaml (DeepSpeed ZeRO-2)")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(tp.num_processes), "--num_machines", "1", script]


def training_backend(requested_backend: str, tp) -> str:
    """The backend the train stage uses.

    `auto` trains through transformers whenever the fast rollouts apply: under Unsloth the rollouts are TRL's
    own, and a GRPO step at the 1B shape took ~6x longer there at steady state, after minutes of compilation
    (benchmarks/README.md); Unsloth is picked when they do not apply (top-p sampling, another rollout engine).
    Unsloth trains on one GPU only: several processes always use transformers + peft under accelerate, and full
    fine-tuning (train.finetune=full) always uses transformers.
    """
    from mcgrpo.modeling import pick_backend

    if tp.finetune == "full":
        if requested_backend == "unsloth":
            raise UserError("train.finetune=full trains through transformers (the project applies Unsloth's LoRA "
                            "only); set model.backend to auto or transformers, or train.finetune to lora")
        return "transformers"
    if tp.num_processes > 1:
        if requested_backend == "unsloth":
            raise UserError("model.backend=unsloth trains on one GPU only; for train.num_processes > 1 set "
                            "model.backend to auto or transformers")
        return "transformers"
    if requested_backend == "auto" and rollout_engine(tp, "transformers") == "fast":  # the fast rollouts apply
        return "transformers"
    return pick_backend(requested_backend)


def process_state():
    """accelerate's view of this process (rank, world size); one process when not launched."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def uses_learned_reward(tp) -> bool:
    return bool(tp.reward_weights.get(LEARNED_REWARD))


def reward_functions(tp, reward_model_file=None) -> list:
    """The weighted rewards in params order (TRL pairs them with GRPOConfig.reward_weights by position)."""
    return [load_learned_reward(reward_model_file) if name == LEARNED_REWARD else REWARDS[name]
            for name, weight in tp.reward_weights.items() if weight]


def run_fingerprint(tp, model_params, train_file, reward_model_file=None) -> dict:
    """What a checkpoint must match to be resumed: every train and model param, the data, and the
    learned reward model when training uses it.

    The model section matters too: a transformers-backend checkpoint must never be resumed by an
    Unsloth run (seen on the GPU machine before this covered the backend).
    """
    fingerprint = {"train": tp.model_dump(), "model": model_params.model_dump(),
                   "train_data_sha256": sha256_file(train_file)}
    if uses_learned_reward(tp) and reward_model_file and Path(reward_model_file).exists():
        fingerprint["reward_model_sha256"] = sha256_file(reward_model_file)
    return fingerprint


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint can't be resumed (None if it looks whole): a run killed while saving leaves
    missing or truncated files, which would otherwise crash the resumed run."""
    state = checkpoint / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return "trainer_state.json missing or unreadable"
    for weights in checkpoint.glob("*.safetensors"):
        if problem := safetensors_problem(weights):
            return f"{weights.name} {problem}"
    for pickled in checkpoint.glob("*.pt"):
        if not zipfile.is_zipfile(pickled):  # torch.save writes a zip; a truncated one has no directory
            return f"{pickled.name} truncated"
    return None


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N folder that is whole; damaged ones are reported and skipped."""
    for checkpoint in sorted(output_dir.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[-1]), reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        print(f"warning: skipping damaged checkpoint {checkpoint} ({problem})")
    return None


def prepare_checkpoints(output_dir: Path, fingerprint: dict) -> Path | None:
    """Return the checkpoint to resume from, or clear the folder if it belongs to another run."""
    marker = output_dir / RUN_MARKER
    if marker.exists() and json.loads(marker.read_text()) == fingerprint:
        return last_complete_checkpoint(output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    write_json(marker, fingerprint)
    return None


def _truncate_curves(live_dir: Path, last_step: int) -> None:
    """Drop logged rows past the checkpoint we resume from, so the curves have no duplicate steps."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= last_step]
        with atomic_path(tsv) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(kept)


def stop_on_non_finite_callback():
    """A callback that stops training at the first logged NaN/inf loss or gradient norm.

    A diverged bf16 run otherwise keeps going: its NaN weights give NaN logits, which the rollouts' samplers
    are made to survive (so the crash of plain TRL's multinomial sampling does not happen here), and every
    later step would train on garbage. The last checkpoint before it stays for inspection.
    """
    import math

    from transformers import TrainerCallback

    class StopOnNonFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise UserError(f"training diverged at step {state.global_step}: {key} is {value}; lower "
                                    "train.learning_rate or train.max_grad_norm, or set model.dtype=float32")

    return StopOnNonFinite()


def make_live_callback(live_dir: Path, resume_step: int | None):
    """A dvclive callback writing curves to live_dir, or None (with a warning) where dvclive is missing."""
    try:
        from dvclive import Live
        from transformers.integrations import DVCLiveCallback
    except ImportError as err:  # e.g. the package used outside a DVC install; the pipeline always has it
        print(f"warning: dvclive unavailable ({err}); training curves will not be logged")
        return None

    class StepAlignedDVCLive(DVCLiveCallback):
        # dvclive counts log calls; pin its step to the trainer's so a resumed run continues its curves.
        def on_log(self, args, state, control, **kwargs):
            if self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

    if resume_step is None:
        shutil.rmtree(live_dir, ignore_errors=True)
    else:
        _truncate_curves(live_dir, resume_step)
    # dvc.yaml declares the plots itself, and dvc (not dvclive) records experiments.
    live = Live(dir=str(live_dir), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False)
    return StepAlignedDVCLive(live=live)


def saved_weights(folder: Path) -> list[Path]:
    """What save_pretrained wrote of the trained weights: a LoRA adapter, or (train.finetune=full) the whole
    model, sharded or not."""
    names = ("adapter_model.safetensors", "adapter_config.json", "README.md", "config.json", "generation_config.json")
    return sorted(p for p in folder.iterdir() if p.name in names or (p.name.startswith("model") and
                                                                    ".safetensors" in p.name))


def _sort_target_modules(config_file: Path) -> None:
    """peft writes target_modules from a set, in per-process hash order: sort it so the same training
    gives a byte-identical adapter (and DVC sees no change). A whole model (full fine-tuning) has no such file."""
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_policy(p, backend: str):
    """(model, tokenizer, peft_config) to train: LoRA unless train.finetune is full, with grouped attention when
    train.grouped_attention asks for it (transformers backend)."""
    from mcgrpo.modeling import load_model

    full = p.train.finetune == "full"
    model, tokenizer, peft_config = load_model(p.model, lora=None if full else p.train.lora, seed=p.train.seed,
                                               backend=backend, full_finetune=full)
    if p.train.grouped_attention and backend == "transformers":
        from mcgrpo.fast_generation import use_grouped_attention

        use_grouped_attention(model)
    return model, tokenizer, peft_config


def _layer_forward(layer, *args, **kwargs):
    """A decoder layer's own forward, as compile_decoder_layers compiles it (one function for every layer)."""
    return type(layer).forward(layer, *args, **kwargs)


def shared_prompt_attention(tp, engine: str) -> str:
    """train.shared_prompt_attention for this run: auto is split with the fast rollouts (the faster of the two on a
    GPU, benchmarks/README.md) and masked with rollouts that call the policy's generate, which split's attention
    would reach."""
    if tp.shared_prompt_attention == "auto":
        return "split" if engine == "fast" else "masked"
    return tp.shared_prompt_attention


def compiles_layers(tp, backend: str, engine: str) -> bool:
    """Whether train.compile_layers compiles this run's decoder layers: auto does on CUDA with the transformers
    backend and the fast rollouts. Other rollouts call the policy's own `generate`, whose KV caches would reach the
    compiled layers (untested), and Unsloth compiles its own."""
    if tp.compile_layers == "auto":
        return backend == "transformers" and engine == "fast" and torch.cuda.is_available()
    if tp.compile_layers and (backend != "transformers" or engine != "fast"):
        raise UserError(f"train.compile_layers=true needs the transformers backend and the fast rollouts (this run: "
                        f"backend {backend}, rollouts {engine}); set train.compile_layers to auto or false")
    return bool(tp.compile_layers)


def compile_decoder_layers(model, backend: str = "inductor") -> None:
    """Run each decoder layer of a (peft-wrapped) transformers model through one torch.compile'd function, for
    the training forward and backward and the no-grad log-prob passes.

    Eager, a GRPO micro-batch's forward is thousands of small kernels (Gemma 3's float32 RMSNorms, the LoRA
    matmuls and adds, casts) launched one by one from Python; the policy's forward and backward were the largest
    part of a profiled step (benchmarks/README.md). Compiled, each layer is a few fused kernels. Dynamic shapes:
    every batch pads to its own length, and one graph serves them all. Gradient checkpointing still wraps each
    layer's call (transformers' GradientCheckpointingLayer.__call__), so the backward recomputes through the
    same compiled graph. The forward is an instance attribute, which the fast rollouts' layer_forwards
    shadows for their own calls and puts back after. `backend`: torch.compile's (tests trace with "eager").
    """
    from mcgrpo.patches import raise_recompile_limit, transformers_model

    raise_recompile_limit(64)  # a graph per layer kind, grad mode and adapter state, each a recompile of one function
    compiled = torch.compile(_layer_forward, dynamic=True, backend=backend)
    for layer in transformers_model(model).get_decoder().layers:
        layer.forward = functools.partial(compiled, layer)


def shared_prompt_passes(trainer, multiple: int | None = None, attention: str = "masked", engine: str = "fast") -> bool:
    """Make the trainer's log-prob passes compute each prompt once for all of its completions, and its micro-batches
    hold whole groups (train.shared_prompts; mcgrpo.shared_prompt); True if done. `multiple`: the packed rows' shared
    part is rounded up to it (train.pad_to_multiple_of). `attention` (train.shared_prompt_attention): masked runs the
    model's attention with dense masks; an attention whose masks are not SDPA's or eager's (flash attention takes a
    padding mask only) then keeps TRL's passes, with a warning. split runs shared_prompt.split_attention for every
    training step (gradient checkpointing recomputes the layers in the backward, after the pass has returned), which
    only the fast rollouts (`engine` fast), with an attention of their own, leave alone."""
    from mcgrpo import shared_prompt
    from mcgrpo.patches import attention_for_call, attention_implementation, transformers_model, use_shared_prompts

    base = transformers_model(trainer.accelerator.unwrap_model(trainer.model))
    if attention == "masked" and not shared_prompt.supports(base.config):
        print(f"warning: train.shared_prompts: attention {attention_implementation(base)!r} takes no dense mask; "
              "the log-prob passes stay TRL's")
        return False
    if attention == "split":
        if engine != "fast":
            raise UserError(f"train.shared_prompt_attention=split needs the fast rollouts (this run's: {engine}), "
                            "whose attention is their own; set train.shared_prompt_attention to masked")
        name, plain_step = shared_prompt.register_split_attention(), trainer.training_step

        @functools.wraps(plain_step)
        def training_step(*args, **kwargs):
            with attention_for_call(base, name):
                return plain_step(*args, **kwargs)

        trainer.training_step = training_step
    use_shared_prompts(trainer, functools.partial(shared_prompt.completion_logps, base=base, multiple=multiple,
                                                  attention=attention),
                       shared_prompt.shuffle_keeping_prompts_together)
    return True


def train_grpo(model, tokenizer, peft_config, records, tp, *, checkpoints: Path, adapter_out: Path,
               live_dir: Path, fingerprint: dict, bf16: bool, reward_model_file=None, engine: str = "hf",
               callbacks: tuple = (), shots: list[dict] = (), backend: str = "transformers",
               phases: StepPhases | None = None) -> dict:
    """Run (or resume) GRPO and save the LoRA adapter (or, without peft, the whole model) atomically; returns a
    summary for metrics. `phases`: a StepPhases to time the steps with (a caller that wants every step's split
    passes its own; the summary holds the last 10 steps' mean).

    Under `accelerate launch` every process runs this; only the main one touches the checkpoint
    folder's marker, the curves and the adapter.
    """
    from trl import GRPOTrainer

    from mcgrpo.patches import (attention_backends, generate_with_eager_attention, install_torch_logprobs,
                                split_attention_compiles)

    install_torch_logprobs()
    rewards = reward_functions(tp, reward_model_file)  # first: a skipped reward model fails before any work
    compile_layers = compiles_layers(tp, backend, engine)
    procs = process_state()
    main = procs.is_main_process
    # The main process clears or keeps the checkpoint folder; the others look once it has decided.
    resume = prepare_checkpoints(checkpoints, fingerprint) if main else None
    procs.wait_for_everyone()
    if not main:
        resume = prepare_checkpoints(checkpoints, fingerprint)  # the marker matches now: nothing is deleted
    saved = json.loads((resume / "trainer_state.json").read_text()) if resume else None
    resume_step = int(saved["global_step"]) if saved else None
    if resume_step is not None and resume_step >= tp.max_steps:
        # The run already finished (e.g. `dvc repro --force`): export its last checkpoint. Resuming the
        # trainer here would train one step past max_steps.
        print(f"{resume} already reached max_steps={tp.max_steps}; exporting it")
        if main:
            with atomic_path(adapter_out) as tmp:
                tmp.mkdir()
                for path in saved_weights(resume):
                    shutil.copy2(path, tmp / path.name)
                tokenizer.save_pretrained(tmp)
                _sort_target_modules(tmp / "adapter_config.json")
        summary_file = checkpoints / RUN_SUMMARY
        if summary_file.exists():  # the run's own figures (runtime, resume point, rollout time), not a re-count
            return json.loads(summary_file.read_text())
        return _summary(saved["log_history"], resume_step, resume_step, 0.0, procs)
    if resume:
        print(f"resuming from {resume} (step {resume_step})")
    live = make_live_callback(live_dir, resume_step) if main else None
    rollouts = None
    if engine == "fast":
        rollouts = fast_rollouts(tokenizer, records, tp, shots)
    stop_at_variant_end(model, tokenizer, tp.variant)
    trainer = GRPOTrainer(
        model=model, reward_funcs=rewards, args=grpo_config(tp, checkpoints, bf16, engine),
        train_dataset=grpo_dataset(records, tp.variant, shots, tp.option_order), processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=([live] if live else []) + [stop_on_non_finite_callback()] + list(callbacks), rollout_func=rollouts,
    )
    # TRL's rollouts call the policy's generate: keep them off SDPA's bad batches. Unsloth patches attention its own
    # way, and switching its implementation is untested, so its rollouts are left as they are.
    if engine in ("hf", "hf_static") and backend == "transformers":
        generate_with_eager_attention(trainer.model)
    if compile_layers:
        compile_decoder_layers(trainer.model)
    shared_prompts, attention = False, shared_prompt_attention(tp, engine)
    if tp.shared_prompts:
        if backend == "transformers":
            shared_prompts = shared_prompt_passes(trainer, tp.pad_to_multiple_of, attention, engine)
        else:
            print(f"note: train.shared_prompts applies to the transformers backend; {backend}'s trainer computes its "
                  "own log-probs")
    phases = phases or StepPhases()
    phases.attach(trainer)
    with attention_backends(tp.cudnn_attention), split_attention_compiles(shared_prompts and attention == "split"):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if main:
        with atomic_path(adapter_out) as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _sort_target_modules(tmp / "adapter_config.json")
    summary = _summary(trainer.state.log_history, trainer.state.global_step, resume_step or 0,
                       result.metrics.get("train_runtime", 0.0), procs, rollouts.seconds if rollouts else None,
                       phases)
    summary["shared_prompts"] = shared_prompts  # whether the log-prob passes ran one row per prompt
    if shared_prompts:
        summary["shared_prompt_attention"] = attention  # auto resolved: split or masked
    if main:
        write_json(checkpoints / RUN_SUMMARY, summary)
    return summary


KL_SPIKE = 100.0


def _summary(log_history: list[dict], steps: int, resumed_from_step: int, runtime_s: float, procs=None,
             rollout_seconds: list[float] | None = None, phases: StepPhases | None = None) -> dict:
    history = [h for h in log_history if "reward" in h]
    tail = history[-10:]
    summary = {
        "steps": steps,
        "resumed_from_step": resumed_from_step,
        "num_processes": procs.num_processes if procs else 1,
        "train_runtime_s": round(runtime_s, 1),
        "reward_first": round(history[0]["reward"], 4) if history else None,
        "reward_last10": round(sum(h["reward"] for h in tail) / len(tail), 4) if tail else None,
        "completion_length_last10": round(sum(h.get("completions/mean_length", 0) for h in tail) / len(tail), 1)
        if tail else None,
        "step_time_s_last10": round(sum(h.get("step_time", 0) for h in tail) / len(tail), 2) if tail else None,
    }
    # A collapsed policy samples the same completion for every prompt: its groups all get one reward, so
    # GRPO's advantages (and gradients) are zero and it stops learning (see report.collapse_warning).
    for key, name in (("entropy", "entropy_last10"), ("frac_reward_zero_std", "frac_reward_zero_std_last10")):
        values = [h[key] for h in tail if key in h]
        if values:
            summary[name] = round(sum(values) / len(values), 4)
    # A per-token KL estimate above KL_SPIKE means the sampled tokens were near-impossible under the policy that
    # sampled them: rollouts and the training forward disagreed at that step (the report's insights say so).
    if any("kl" in h for h in history):  # TRL logs a KL only with train.beta > 0
        spikes = [h.get("step") for h in history if h.get("kl", 0) > KL_SPIKE]
        summary["kl_max"] = float(f"{max(h.get('kl', 0) for h in history):.3g}")
        summary["kl_spikes"] = len(spikes)
        summary["kl_spike_steps"] = ",".join(map(str, spikes))  # a string: dvc metrics hold numbers and strings
    if rollout_seconds:  # fast rollouts time themselves: how much of a step is sampling, how much training
        later = (rollout_seconds[1:] or rollout_seconds)[-10:]  # the first call compiles
        summary["rollout_time_s_last10"] = round(sum(later) / len(later), 2)
    if phases and (split := phases.last10()):
        summary["step_phases_s_last10"] = split
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        summary["peak_gpu_memory_gib"] = round(peak, 2)  # this process's GPU (the main one under accelerate)
        if procs is not None and procs.num_processes > 1:
            from accelerate.utils import gather_object

            summary["peak_gpu_memory_gib_per_process"] = [round(m, 2) for m in gather_object([peak])]
    return summary
