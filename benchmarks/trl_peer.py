"""The peer: plain TRL `GRPOTrainer` with its own defaults, on the pipeline's prompts, data, reward and eval.

What a user gets without this project: TRL's `GRPOConfig` defaults (learning rate 1e-6, full fine-tuning,
beta 0, TRL's rollouts through `model.generate`, stopping at end-of-sequence only) with only the run's shape
set to the pipeline's (steps, prompts per step, group size, completion length, the reward and its weights),
so both runs see the same number of completions. The reward is the pipeline's rules that score a completion alone:
`base_choice` (the base model's own log-likelihood choice, which the train stage prepares) only with
--base-choice, which prepares it the same way. `--lora-r/--lr` give the stronger peer measured in
`../shared/real-gemma` (LoRA r 16 on all linear layers, lr 5e-5). `--constrained` gives TRL the pipeline's rollouts as
its `rollout_func` (training.FastRollouts, stopping at the answer's line end and, for completion_pick, constrained to
the options), with everything else TRL's defaults: it separates what the rollouts bring from what the pipeline's
other settings bring. It evaluates with the pipeline's own
routine on the same eval set and compares against the pipeline's baseline predictions (McNemar). The model loads
as the pipeline's does, from params.yaml's `model` section (dtype unless --dtype, and `model.tf32`), so both train
with the same arithmetic.

Run from the project root after `dvc repro baseline` (it reads data/prepared/ and data/predictions/):

    python benchmarks/trl_peer.py --out $OUT/peer_defaults
    python benchmarks/trl_peer.py --lora-r 16 --lr 5e-5 --out $OUT/peer_lora
"""

import argparse
import time
from pathlib import Path

import torch

from mcgrpo import paths
from mcgrpo.evaluation import answer_eval_set
from mcgrpo.fileio import read_jsonl, write_json, write_jsonl
from mcgrpo.metrics import compare, format_comparison, summarize
from mcgrpo.modeling import load_model, torch_dtype
from mcgrpo.params import load_params
from mcgrpo.patches import install_torch_logprobs
from mcgrpo.rewards import BASE_CHOICE
from mcgrpo.training import fast_rollouts, grpo_dataset, reward_functions, stop_at_variant_end, with_base_choices

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--out", required=True)
parser.add_argument("--lora-r", type=int, default=0, help="0: full fine-tuning, TRL's default")
parser.add_argument("--lr", type=float, default=None, help="default: TRL's (1e-6)")
parser.add_argument("--dtype", default=None, help="bfloat16 | float32 (default: model.dtype from params.yaml)")
parser.add_argument("--constrained", action="store_true",
                    help="the pipeline's rollouts (training.FastRollouts: line-end stop, completion_pick's constraint) "
                         "as TRL's rollout_func; TRL's defaults otherwise")
parser.add_argument("--base-choice", action="store_true",
                    help="keep train.reward_weights.base_choice: the base model's log-likelihood choices, prepared "
                         "as the train stage prepares them (default: the peer trains without that reward)")
args = parser.parse_args()

p = load_params()
tp, out = p.train, Path(args.out)
if not args.base_choice:
    tp = tp.model_copy(update={"reward_weights": {k: w for k, w in tp.reward_weights.items() if k != BASE_CHOICE}})
out.mkdir(parents=True, exist_ok=True)
model_params = p.model.model_copy(update={"dtype": args.dtype}) if args.dtype else p.model
# Everything read up front: the workspace may move on (another experiment applied) while this trains.
train_records, eval_records = read_jsonl(paths.TRAIN_SET), read_jsonl(paths.EVAL_SET)
shots, baseline_rows = read_jsonl(paths.SHOTS), read_jsonl(paths.BASELINE_PREDICTIONS)
# a trainable model with no peft of the project's: TRL applies --lora-r itself, or trains every weight
model, tokenizer, _ = load_model(model_params, backend="transformers", full_finetune=True)
install_torch_logprobs()
if tp.reward_weights.get(BASE_CHOICE):
    train_records, agree = with_base_choices(model, tokenizer, train_records)
    print(f"base_choice: the base model's choice is the gold answer for {agree:.1%} of the training questions")

from peft import LoraConfig  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

shape = dict(max_steps=tp.max_steps, per_device_train_batch_size=tp.per_device_train_batch_size,
             gradient_accumulation_steps=tp.gradient_accumulation_steps, num_generations=tp.num_generations,
             max_completion_length=tp.max_completion_length,
             reward_weights=[w for w in tp.reward_weights.values() if w])
config = GRPOConfig(output_dir=str(out / "trainer"), report_to="none", save_strategy="no", logging_steps=10,
                    bf16=torch_dtype(model_params.dtype) == torch.bfloat16, use_cpu=not torch.cuda.is_available(),
                    seed=tp.seed, **shape, **({"learning_rate": args.lr} if args.lr else {}))
peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                         task_type="CAUSAL_LM") if args.lora_r else None
rollouts = fast_rollouts(tokenizer, train_records, tp, shots) if args.constrained else None
if args.constrained:
    stop_at_variant_end(model, tokenizer, tp.variant)  # as the train stage does: the completion ends with its line
trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(tp), args=config, processing_class=tokenizer,
                      train_dataset=grpo_dataset(train_records, tp.variant, shots),
                      peft_config=peft_config, rollout_func=rollouts)
start = time.perf_counter()
trainer.train()
train_seconds = time.perf_counter() - start

model = trainer.model.merge_and_unload() if args.lora_r else trainer.model
model.eval()
eval_params = p.eval.model_copy(update={"mode": "generate", "variants": [tp.variant]})
rows = answer_eval_set(model, tokenizer, eval_records, eval_params, "peer", shots)
comparison = compare(baseline_rows, rows)
rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
settings = {k: getattr(config, k) for k in ("learning_rate", "beta", "loss_type", "lr_scheduler_type", "temperature",
                                             "top_k", "top_p", "max_grad_norm", "warmup_steps", "bf16")}
write_jsonl(out / "predictions.jsonl", rows)
peer = "trl GRPOTrainer defaults" + (f" + LoRA r {args.lora_r}" if args.lora_r else "") + \
    (" + the pipeline's rollouts" if args.constrained else "")
write_json(out / "metrics.json", {"peer": peer,
                                  "settings": {**settings, **shape, "lora_r": args.lora_r,
                                               "pipeline_rollouts": args.constrained,
                                               "reward_names": [k for k, w in tp.reward_weights.items() if w]},
                                  "train_runtime_s": round(train_seconds, 1), "reward_curve_every_10_steps": rewards,
                                  "metrics": summarize(rows), "comparison": comparison})
print(format_comparison(comparison))
print(f"peer trained {tp.max_steps} steps in {train_seconds:.0f} s; reward per 10 steps {[round(r, 3) for r in rewards]}")
