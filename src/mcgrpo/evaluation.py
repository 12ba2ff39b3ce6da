"""Answer the eval set under every prompt variant: the one routine baseline and evaluate share."""

import time

import torch

from mcgrpo.constrained import answers_for
from mcgrpo.data.stats import question_kind
from mcgrpo.generation import encode_prompts, generate, static_generator_for
from mcgrpo.loglik import loglik_rows
from mcgrpo.patches import attention_backends
from mcgrpo.prompts import render_prompt, stop_token_ids
from mcgrpo.rewards import judge, reasoning_text


def answer_eval_set(model, tokenizer, records: list[dict], ep, model_label: str, shots: list[dict] = ()) -> list[dict]:
    """Prediction rows (id, variant, model, completion, pred, correct, format_ok, reward, n_tokens, ...).

    eval.mode: "generate" (each prompt variant), "loglik" (option log-likelihood, no generation) or both.
    shots: solved examples shown before each completion-variant question (prepare.n_shots).
    """
    with attention_backends(ep.cudnn_attention):
        return _answer_eval_set(model, tokenizer, records, ep, model_label, shots)


def _answer_eval_set(model, tokenizer, records, ep, model_label, shots):
    rows = []
    if ep.mode in ("loglik", "both"):
        rows += loglik_rows(model, tokenizer, records, ep.batch_size, model_label, question_kind)
    variants = ep.variants if ep.mode in ("generate", "both") else []
    # tokenized once, here: the generator's size and every batch come from these ids
    prompts_by_variant = {v: encode_prompts(tokenizer, [render_prompt(tokenizer, r, v, shots) for r in records])
                          for v in variants}
    # One generator for every variant, sized for the longest prompt of any: compiled once per stage run.
    static = static_generator_for(model, tokenizer, [p for ps in prompts_by_variant.values() for p in ps],
                                  batch_size=min(ep.batch_size, len(records)), max_new_tokens=ep.max_new_tokens,
                                  engine=ep.engine, top_p=ep.top_p, compile_prefill=ep.compile_prefill)
    for variant, prompts in prompts_by_variant.items():
        start = time.perf_counter()
        outputs = generate(model, tokenizer, prompts, batch_size=ep.batch_size, max_new_tokens=ep.max_new_tokens,
                           temperature=ep.temperature, top_p=ep.top_p, seed=ep.seed, engine=ep.engine,
                           desc=f"{model_label} / {variant}", static=static,
                           stop_ids=stop_token_ids(tokenizer, variant),
                           answers=answers_for(tokenizer, records, variant))
        seconds = time.perf_counter() - start
        new_tokens = sum(o["n_tokens"] for o in outputs)
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else ""
        split = ""
        if static is not None and static.device.type == "cuda":  # GPU time so far: where a slow stage spends it
            t = static.seconds()
            split = f"; GPU so far: prefill {t['prefill_s']:.1f} s, decode {t['decode_s']:.1f} s over {t['calls']} batches"
        print(f"{model_label} / {variant}: {len(prompts)} prompts, {new_tokens} new tokens in {seconds:.1f} s "
              f"({new_tokens / seconds:.0f} tok/s){memory}{split}")
        for record, out in zip(records, outputs):
            score = judge(out["text"], record["answer"], len(record["options"]), variant, record["options"])
            rows.append({"id": record["id"], "variant": variant, "model": model_label, "source": record["source"],
                         "kind": question_kind(record["question"]), "answer": record["answer"],
                         "n_options": len(record["options"]), "options": record["options"], **score,
                         "n_tokens": out["n_tokens"], "reasoning_words": len(reasoning_text(out["text"]).split()),
                         "finished": out["finished"], "completion": out["text"]})
    return rows
