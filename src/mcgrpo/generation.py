"""Batched generation shared by the baseline, evaluate and reward_model stages.

Prompts are sorted by length so each batch carries little padding, generated with left padding,
and returned in the caller's order. Greedy unless a temperature > 0 is given.

Two engines: "hf" is `model.generate`; "fast" is the project's StaticGenerator (a static KV cache,
a compiled decode step replayed as a CUDA graph per token, the prefill compiled only if asked; no top-p),
built once and reused for every batch. Callers with several prompt lists (one per prompt variant) build it once with
`static_generator_for` and pass it to every call, so its compile time is paid once per stage run.
"auto" picks fast on CUDA when top_p is 1. Either engine can constrain each answer to one of its question's
options (`answers`, mcgrpo.constrained: the completion_pick variant).
"""

import torch
from tqdm.auto import tqdm

from mcgrpo.constrained import AllowedAnswers, answer_tensor
from mcgrpo.patches import eager_attention_for_generation


def resolve_engine(engine: str, device: torch.device, top_p: float) -> str:
    if engine == "auto":
        return "fast" if device.type == "cuda" and top_p >= 1.0 else "hf"
    return engine


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Token ids of chat-templated prompts; lists of ids pass through, so callers tokenize once.

    The chat template already put <bos> in the text: no second one is added.
    """
    if not prompts or not isinstance(prompts[0], str):
        return [list(ids) for ids in prompts]
    return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_token_id: int, device=None, multiple: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token-id lists, left-padded (decoder-only batches generate from the right) to
    the longest row, or to the next multiple of `multiple` tokens."""
    rows = [torch.tensor(ids, dtype=torch.long) for ids in rows]
    pad = torch.nn.utils.rnn.pad_sequence
    ids = pad(rows, batch_first=True, padding_value=pad_token_id, padding_side="left")
    mask = pad([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0, padding_side="left")
    extra = -ids.shape[1] % multiple if multiple else 0
    if extra:
        ids = torch.nn.functional.pad(ids, (extra, 0), value=pad_token_id)
        mask = torch.nn.functional.pad(mask, (extra, 0), value=0)
    return ids.to(device), mask.to(device)


def static_generator_for(model, tokenizer, prompts, *, batch_size: int, max_new_tokens: int, engine="auto",
                         top_p=1.0, compile_prefill=False):
    """One StaticGenerator that fits every prompt given (texts or token ids, e.g. all variants'), or None where
    engine isn't fast."""
    device = next(model.parameters()).device
    if not prompts or resolve_engine(engine, device, top_p) != "fast":
        return None
    from mcgrpo.fast_generation import StaticGenerator

    longest = max(map(len, encode_prompts(tokenizer, prompts)))
    return StaticGenerator(model, batch_size=min(batch_size, len(prompts)), max_length=longest + max_new_tokens,
                           compile_prefill=compile_prefill)


def generate(model, tokenizer, prompts, *, batch_size=16, max_new_tokens=256, temperature=0.0,
             top_p=1.0, seed=0, desc="generating", engine="auto", static=None, stop_ids=(), answers=None) -> list[dict]:
    """[{"text", "n_tokens", "finished"}] per prompt (texts, or their token ids from encode_prompts); text has
    special tokens removed.

    static: a StaticGenerator from static_generator_for to reuse (engine fast); else one is built here.
    stop_ids: tokens that end a completion besides the model's end-of-sequence ones (prompts.stop_token_ids);
    the text keeps a stop token of these, since it can hold more than a newline.
    answers: per prompt, the token lists its answer must be one of (constrained.answer_tokens), or None.
    """
    torch.manual_seed(seed)
    eos_ids = set(model.generation_config.eos_token_id or [])
    stop_ids = eos_ids | set(stop_ids)
    prompts = encode_prompts(tokenizer, prompts)  # once: 4,934 RACE prompts took seconds per tokenizer pass
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows up at once
    # remove_invalid_values: a non-finite logit (NaN/inf) would make torch.multinomial fail with a device-side assert
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "remove_invalid_values": True} \
        if temperature > 0 else {"do_sample": False}
    results = [None] * len(prompts)
    device = next(model.parameters()).device
    engine = resolve_engine(engine, device, top_p)
    if engine != "fast":
        static = None
    elif static is None and prompts:
        static = static_generator_for(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                      engine=engine, top_p=top_p)
    if static is not None:
        rng = torch.Generator(device=device).manual_seed(seed)
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            input_ids, attention_mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
            enc = {"input_ids": input_ids, "attention_mask": attention_mask}
            allowed = None if answers is None else answer_tensor([answers[i] for i in batch], max_new_tokens, device)
            if static is not None:
                new_tokens = static.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                                             eos_token_ids=stop_ids, pad_token_id=tokenizer.pad_token_id,
                                             temperature=temperature, generator=rng, answers=allowed).tolist()
            else:
                processors = {} if allowed is None else \
                    {"logits_processor": [AllowedAnswers(allowed, input_ids.shape[1])]}
                with eager_attention_for_generation(model):  # SDPA's KV-cached decode is wrong on some CUDA batches
                    out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=sorted(stop_ids), top_k=None, **processors, **sampling)
                new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(batch, new_tokens):
                end = next((k for k, t in enumerate(ids) if t in stop_ids), None)
                kept = ids if end is None else ids[:end + (ids[end] not in eos_ids)]
                results[i] = {"text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                              "n_tokens": len(kept), "finished": end is not None}
            bar.update(len(batch))
    return results
