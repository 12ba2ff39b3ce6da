"""reward_model: the base model answers training questions (sampled, several times each); the rule
reward labels each answer right or wrong; a scikit-learn classifier learns to tell them apart from
the reasoning alone. Degenerate labels give a skipped model and metrics saying why, not a crash."""

from mcgrpo import paths
from mcgrpo.constrained import answers_for
from mcgrpo.errors import REWARD_MODEL_OOM, run_stage
from mcgrpo.fileio import read_jsonl, write_json, write_jsonl
from mcgrpo.generation import generate
from mcgrpo.modeling import load_model
from mcgrpo.params import load_params
from mcgrpo.plots import plot_calibration, write_csv
from mcgrpo.prompts import render_prompt, stop_token_ids
from mcgrpo.reward_model import fit_reward_model, save
from mcgrpo.rewards import judge


def main():
    p = load_params()
    rp = p.reward_model
    questions = read_jsonl(paths.TRAIN_SET)[:rp.n_questions]
    model, tokenizer, _ = load_model(p.model)
    repeated = [r for r in questions for _ in range(rp.samples_per_question)]
    shots = read_jsonl(paths.SHOTS)
    outputs = generate(model, tokenizer, [render_prompt(tokenizer, r, rp.variant, shots) for r in repeated],
                       batch_size=rp.batch_size, max_new_tokens=rp.max_new_tokens, temperature=rp.temperature,
                       top_p=rp.top_p, seed=rp.seed, desc="reward-model data",
                       stop_ids=stop_token_ids(tokenizer, rp.variant),
                       answers=answers_for(tokenizer, repeated, rp.variant))
    rows = [{"id": r["id"], "context": r["context"], "question": r["question"], "options": r["options"],
             "answer": r["answer"], "completion": out["text"],
             **judge(out["text"], r["answer"], len(r["options"]), rp.variant, r["options"])}
            for r, out in zip(repeated, outputs)]
    artifact, metrics, bins = fit_reward_model(rows, rp)
    write_jsonl(paths.REWARD_DATA, rows)
    save(paths.REWARD_MODEL, artifact)
    write_csv(paths.REWARD_CALIBRATION_TABLE, bins or [{"bin": "", "predicted": "", "observed": "", "count": ""}])
    plot_calibration(paths.REWARD_CALIBRATION_PNG, bins, metrics)
    write_json(paths.REWARD_MODEL_METRICS, metrics)
    if metrics["skipped"]:
        print(f"reward model skipped: {metrics['reason']}")
    else:
        print(f"reward model ({rp.classifier}) on {metrics['n_test']} held-out completions: ROC AUC "
              f"{metrics['roc_auc']}, Brier {metrics['brier']} (baseline {metrics['brier_baseline']}), "
              f"ECE {metrics['ece']}")


if __name__ == "__main__":
    run_stage(main, oom_hint=REWARD_MODEL_OOM)
