"""train: GRPO with LoRA on the train set; resumes from the last checkpoint of the same run."""

from mcgrpo import paths
from mcgrpo.errors import TRAIN_OOM, run_stage
from mcgrpo.fileio import read_jsonl, write_json
from mcgrpo.modeling import load_model, pick_backend, torch_dtype
from mcgrpo.params import load_params


def main():
    p = load_params()
    records = read_jsonl(paths.TRAIN_SET)
    backend = pick_backend(p.model.backend)  # before TRL is imported: Unsloth must patch it first
    model, tokenizer, peft_config = load_model(p.model, lora=p.train.lora, seed=p.train.seed, backend=backend)
    print(f"backend: {backend}, {len(records)} training prompts, {p.train.max_steps} steps")

    import torch

    from mcgrpo.training import run_fingerprint, train_grpo

    summary = train_grpo(
        model, tokenizer, peft_config, records, p.train, checkpoints=paths.CHECKPOINTS, adapter_out=paths.ADAPTER,
        live_dir=paths.TRAIN_LOGS, fingerprint=run_fingerprint(p.train, p.model, paths.TRAIN_SET, paths.REWARD_MODEL),
        bf16=torch_dtype(p.model.dtype) == torch.bfloat16, reward_model_file=paths.REWARD_MODEL)
    write_json(paths.TRAIN_METRICS, {"backend": backend, **summary})
    print(summary)


if __name__ == "__main__":
    run_stage(main, oom_hint=TRAIN_OOM)
