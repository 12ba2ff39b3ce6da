"""Batched generation shared by the baseline, evaluate and reward_model stages.

Prompts are sorted by length so each batch carries little padding, generated with left padding,
and returned in the caller's order. Greedy unless a temperature > 0 is given.

Two engines: "hf" is `model.generate`; "static" is the project's StaticGenerator (a static KV cache
and one compiled decode step, CUDA only, no top-p), built once per call (one call per prompt variant)
and reused for every batch, so its compile time is paid per call, not per batch. "auto" picks static on CUDA when top_p is 1.
"""

import torch
from tqdm.auto import tqdm


def resolve_engine(engine: str, device: torch.device, top_p: float) -> str:
    if engine == "auto":
        return "static" if device.type == "cuda" and top_p >= 1.0 else "hf"
    return engine


def generate(model, tokenizer, prompts: list[str], *, batch_size=16, max_new_tokens=256, temperature=0.0,
             top_p=1.0, seed=0, desc="generating", engine="auto") -> list[dict]:
    """[{"text", "n_tokens", "finished"}] per prompt; text has special tokens removed."""
    torch.manual_seed(seed)
    stop_ids = set(model.generation_config.eos_token_id or [])
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: OOM shows up at once
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False}
    results = [None] * len(prompts)
    device = next(model.parameters()).device
    engine = resolve_engine(engine, device, top_p)
    static = None
    if engine == "static" and prompts:
        from mcgrpo.fast_generation import StaticGenerator

        static = StaticGenerator(model, batch_size=min(batch_size, len(prompts)),
                                 max_length=max(lengths) + max_new_tokens)
        rng = torch.Generator(device=device).manual_seed(seed)
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            # The chat template already put <bos> in the text: don't add a second one.
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            if static is not None:
                new_tokens = static.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                                             eos_token_ids=stop_ids, pad_token_id=tokenizer.pad_token_id,
                                             temperature=temperature, generator=rng).tolist()
            else:
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
