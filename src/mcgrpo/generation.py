"""Batched generation shared by the baseline and evaluate stages.

Prompts are sorted by length so each batch carries little padding, generated with left padding,
and returned in the caller's order. Greedy unless a temperature > 0 is given.
"""

import torch
from tqdm.auto import tqdm


def generate(model, tokenizer, prompts: list[str], *, batch_size=16, max_new_tokens=256, temperature=0.0,
             top_p=1.0, seed=0, desc="generating") -> list[dict]:
    """[{"text", "n_tokens", "finished"}] per prompt; text has special tokens removed."""
    torch.manual_seed(seed)
    stop_ids = set(model.generation_config.eos_token_id or [])
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: OOM shows up at once
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    results = [None] * len(prompts)
    device = next(model.parameters()).device
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            # The chat template already put <bos> in the text: don't add a second one.
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 top_k=None, **sampling)
            new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(batch, new_tokens):
                end = next((k for k, t in enumerate(ids) if t in stop_ids), None)
                kept = ids if end is None else ids[:end]
                results[i] = {"text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                              "n_tokens": len(kept), "finished": end is not None}
            bar.update(len(batch))
    return results
