"""train: GRPO with LoRA on the train set; resumes from the last checkpoint of the same run.

With train.num_processes > 1 the script relaunches itself under `accelerate launch` (one process per
GPU, DDP or DeepSpeed per train.accelerate_config); every other stage stays single-process.
"""

import subprocess
import sys

from mcgrpo import paths
from mcgrpo.errors import TRAIN_OOM, run_stage
from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.params import load_params
from mcgrpo.rewards import BASE_CHOICE
from mcgrpo.training import accelerate_command, is_launched_worker, training_backend


def main():
    p = load_params()
    if p.train.num_processes > 1 and not is_launched_worker():
        training_backend(p.model.backend, p.train)  # refuse Unsloth before starting the workers
        command = accelerate_command(p.train, __file__)
        print(f"launching {p.train.num_processes} training processes: {' '.join(command[2:])}", flush=True)
        sys.exit(subprocess.run(command, check=False).returncode)
    records = read_jsonl(paths.TRAIN_SET)
    backend = training_backend(p.model.backend, p.train)  # before TRL is imported: Unsloth must patch it first

    import torch

    from mcgrpo.modeling import torch_dtype
    from mcgrpo.training import (load_policy, process_state, rollout_engine, run_fingerprint, train_grpo,
                                 with_base_choices)

    model, tokenizer, peft_config = load_policy(p, backend)
    print(f"backend: {backend}, {len(records)} training prompts, {p.train.max_steps} steps")

    engine = rollout_engine(p.train, backend)
    print(f"rollouts: {engine}")
    base_choice = {}
    if p.train.reward_weights.get(BASE_CHOICE):
        records, agree = with_base_choices(model, tokenizer, records)
        base_choice = {"base_choice_accuracy": round(agree, 4)}
        print(f"base_choice reward: the base model's log-likelihood choice is the gold answer for {agree:.1%} of "
              f"the {len(records)} training questions")

    summary = train_grpo(
        model, tokenizer, peft_config, records, p.train, shots=read_jsonl(paths.SHOTS), checkpoints=paths.CHECKPOINTS, adapter_out=paths.ADAPTER,
        live_dir=paths.TRAIN_LOGS, fingerprint=run_fingerprint(p.train, p.model, paths.TRAIN_SET, paths.REWARD_MODEL),
        bf16=torch_dtype(p.model.dtype) == torch.bfloat16, reward_model_file=paths.REWARD_MODEL, engine=engine,
        backend=backend)
    if process_state().is_main_process:
        write_json(paths.TRAIN_METRICS, {"backend": backend, "rollout_engine": engine, **base_choice, **summary})
        print(summary)


if __name__ == "__main__":
    run_stage(main, oom_hint=TRAIN_OOM)
