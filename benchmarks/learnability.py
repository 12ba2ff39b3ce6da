"""Learnability check: does the project's own GRPO code raise the reward on a task it can learn?

A warm-started tiny model (it answers in format, at chance) is trained with `mcgrpo.training.train_grpo`
on synthetic questions whose passage ends with the answer spelled out ("The correct option is C."):
a policy that copies that letter gets reward 1.2, one that guesses ~0.45. If reward -> advantage ->
update is wired right, the mean reward must climb well above chance within the fixed step budget.
Writes the per-step reward curve (CSV + PNG) and a JSON summary.

    python benchmarks/learnability.py --steps 150 --out $OUT/learnability
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mcgrpo.data.synthetic import make_synthetic_mc  # noqa: E402
from mcgrpo.fileio import write_jsonl  # noqa: E402
from mcgrpo.modeling import build_tiny_model, load_model  # noqa: E402
from mcgrpo.params import ModelParams, TrainParams  # noqa: E402
from mcgrpo.training import run_fingerprint, train_grpo  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--lr", type=float, default=5e-4)
parser.add_argument("--out", required=True)
parser.add_argument("--work", default="/tmp/mcgrpo-learnability")
args = parser.parse_args()

out, work = Path(args.out), Path(args.work)
out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
model_dir = build_tiny_model(work / "tiny", warm_start_steps=200)
records = [{**r, "source": "synthetic", "context": f"{r['context']} The correct option is {r['answer']}."}
           for r in make_synthetic_mc(400, seed=7)]
write_jsonl(work / "train.jsonl", records)
mp = ModelParams(name=str(model_dir), backend="transformers", dtype="float32")
tp = TrainParams(max_steps=args.steps, learning_rate=args.lr, warmup_steps=0, per_device_train_batch_size=16,
                 gradient_accumulation_steps=1, num_generations=8, max_completion_length=24, temperature=1.0,
                 beta=0.0, save_steps=10_000, lora={"r": 16, "alpha": 32}, gradient_checkpointing=False,
                 reward_weights={"correct": 1.0, "format": 0.2}, logging_steps=1, seed=0)
model, tokenizer, peft_config = load_model(mp, lora=tp.lora, seed=tp.seed)
summary = train_grpo(model, tokenizer, peft_config, records, tp, checkpoints=work / "ckpt", adapter_out=work / "adapter",
                     live_dir=work / "live", fingerprint=run_fingerprint(tp, mp, work / "train.jsonl"), bf16=False)
# the per-step curve, from dvclive's TSV (the trainer's own log)
rows = [line.split("\t") for line in (work / "live/plots/metrics/reward.tsv").read_text().splitlines()[1:]]
steps, rewards = [int(r[0]) for r in rows], [float(r[-1]) for r in rows]
(out / "reward_curve.csv").write_text("step,reward\n" + "".join(f"{s},{r}\n" for s, r in zip(steps, rewards)))
first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
result = {"steps": len(steps), "lr": args.lr, "reward_first10": round(first, 3), "reward_last10": round(last, 3),
          "chance_reward": round(0.25 * 1.0 + 0.2 * 0.9, 3), "max_reward": 1.2, "seconds": round(time.perf_counter() - t0),
          "summary": summary}
(out / "learnability.json").write_text(json.dumps(result, indent=2))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(steps, rewards, lw=1, alpha=0.5, label="mean reward per step")
window = 10
smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1]) for i in range(len(rewards))]
ax.plot(steps, smooth, lw=2, label=f"{window}-step average")
ax.axhline(1.2, ls="--", color="grey", lw=1, label="max (right letter, in format)")
ax.set_xlabel("GRPO step")
ax.set_ylabel("reward")
ax.set_title("Learnability: the answer letter is in the passage")
ax.legend(fontsize=7)
fig.savefig(out / "reward_curve.png", dpi=120, bbox_inches="tight")
print(json.dumps(result, indent=2))
