"""Answer the eval set under every prompt variant: the one routine baseline and evaluate share."""

import time

import torch

from mcgrpo.generation import generate
from mcgrpo.prompts import render_prompt
from mcgrpo.rewards import score_completion


def answer_eval_set(model, tokenizer, records: list[dict], ep, model_label: str) -> list[dict]:
    """Prediction rows (id, variant, model, completion, pred, correct, format_ok, reward, n_tokens, ...)."""
    rows = []
    for variant in ep.variants:
        prompts = [render_prompt(tokenizer, r, variant) for r in records]
        start = time.perf_counter()
        outputs = generate(model, tokenizer, prompts, batch_size=ep.batch_size, max_new_tokens=ep.max_new_tokens,
                           temperature=ep.temperature, top_p=ep.top_p, seed=ep.seed,
                           desc=f"{model_label} / {variant}")
        seconds = time.perf_counter() - start
        new_tokens = sum(o["n_tokens"] for o in outputs)
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else ""
        print(f"{model_label} / {variant}: {len(prompts)} prompts, {new_tokens} new tokens in {seconds:.1f} s "
              f"({new_tokens / seconds:.0f} tok/s){memory}")
        for record, out in zip(records, outputs):
            score = score_completion(out["text"], record["answer"], len(record["options"]), variant)
            rows.append({"id": record["id"], "variant": variant, "model": model_label, "source": record["source"],
                         "answer": record["answer"], **score, "n_tokens": out["n_tokens"],
                         "finished": out["finished"], "completion": out["text"]})
    return rows
