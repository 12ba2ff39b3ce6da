"""A static-shape decode loop: HF's StaticCache, one compiled decode step, no host sync per token.

`model.generate` spends most of each decode step outside the GPU at Gemma 3 1B's size: Python
logits processors and stopping criteria, and a device-to-host sync every token to ask whether all
sequences are done. Here the whole step (forward, greedy or temperature sampling, bookkeeping of
finished rows) is one function over fixed-shape tensors, so `torch.compile(mode="reduce-overhead")`
turns it into a CUDA graph replayed once per token, and the host only checks for "all finished"
every `check_every` tokens.

Greedy output is token-for-token the same as `model.generate(do_sample=False)` on the same batch
(tested on CPU, uncompiled). top-p/top-k are not supported: callers fall back to `generate`.
"""

import copy

import torch

GQA_ATTENTION = "mcgrpo_grouped_sdpa"


def grouped_query_and_mask(query, key, attention_mask, is_causal=None):
    """Queries (b, kv_heads, group * q_len, d) with each KV head's query heads as extra rows, and the mask to match.

    repeat_kv gives query head h the KV head h // group; reshaping the heads dimension does the same.
    """
    b, n_q_heads, q_len, d = query.shape
    n_kv_heads = key.shape[1]
    group = n_q_heads // n_kv_heads
    q = query.reshape(b, n_kv_heads, group * q_len, d)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, :, : key.shape[-2]]
        mask = mask.unsqueeze(2).expand(b, mask.shape[1], group, q_len, mask.shape[-1])
        mask = mask.reshape(b, mask.shape[1], group * q_len, mask.shape[-1])
    elif q_len > 1 and (is_causal if is_causal is not None else True):
        # rows are (head, position) pairs now: spell the causal mask out per row
        positions = torch.arange(q_len, device=query.device).repeat(group)
        mask = positions[:, None] + (key.shape[-2] - q_len) >= torch.arange(key.shape[-2], device=query.device)
    return q, mask


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA for grouped-query attention without copying K/V per query head.

    HF's sdpa path repeats each KV head for its query heads whenever there is a mask (every padded or
    sliding-window step): Gemma 3 1B has 4 query heads on 1 KV head, so each decode step wrote and read
    4 copies of the whole KV cache. Here a group's query heads become extra query rows against their one
    KV head: the same arithmetic, one read of K and V.
    """
    q, mask = grouped_query_and_mask(query, key, attention_mask, is_causal)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(query.shape).transpose(1, 2).contiguous(), None


def use_grouped_attention(model) -> None:
    """Switch a model's attention to grouped_sdpa (same results as sdpa, less memory traffic)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_ATTENTION, grouped_sdpa)
    AttentionMaskInterface.register(GQA_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GQA_ATTENTION)


def _positions(attention_mask):
    """Position ids as HF computes them for left-padded rows (pads get 1)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


class StaticGenerator:
    """Generate for batches of left-padded prompts with a static KV cache.

    One instance serves many batches of the same (batch size, max length) shape: the compiled graph and
    the cache are reused, so compile time is paid once per instance, not per batch.
    """

    def __init__(self, model, *, batch_size: int, max_length: int, compile: bool | None = None, check_every: int = 32,
                 grouped_attention: bool = True, compile_mode: str | None = "reduce-overhead"):
        from transformers import StaticCache

        if grouped_attention and model.config.num_attention_heads != model.config.num_key_value_heads:
            use_grouped_attention(model)  # note: changes the model's attention for every later call too
        self.model, self.batch_size, self.max_length, self.check_every = model, batch_size, max_length, check_every
        self.device = next(model.parameters()).device
        # Every layer gets a full-length cache, sliding-window layers included: HF's sliding-window cache layer
        # rolls its whole window on every decode step (on an H100 at the 1B shape, ~80 us per layer and
        # tensor, about a third of the step). The model still applies its sliding-window mask, by absolute
        # position, so the attention is the same; the cost is memory (max_length instead of the window).
        cache_config = copy.copy(model.config)
        cache_config.layer_types = ["full_attention"] * model.config.num_hidden_layers
        cache_config.sliding_window = None
        self.cache = StaticCache(config=cache_config, max_cache_len=max_length)
        # Cache positions live on the device from the start: a fresh `torch.tensor([slot], device=...)` per
        # token is a blocking host-to-device copy, which made the host wait for every step (on the H100 at
        # the 1B shape: 4.0 ms of kernels took 7.0 ms per step).
        self.slots = torch.arange(max_length, device=self.device)
        compile = self.device.type == "cuda" if compile is None else compile
        # reduce-overhead: CUDA graphs. None (inductor without graphs) is for profiling the kernels.
        self._decode = torch.compile(self._decode_step, mode=compile_mode, fullgraph=False) if compile \
            else self._decode_step

    def _forward(self, input_ids, attention_mask, position_ids, cache_position):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache_position=cache_position, past_key_values=self.cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1, :]

    @staticmethod
    def _next_tokens(logits, finished, eos, pad, temperature, noise):
        """The next token per row (pad for finished rows) and the updated finished flags."""
        if temperature is None:
            tokens = logits.argmax(-1)
        else:  # Gumbel-max: argmax(logits / T + Gumbel noise) is a sample from softmax(logits / T).
            tokens = (logits.float() / temperature + noise).argmax(-1)
        tokens = torch.where(finished, pad, tokens)
        return tokens, finished | torch.isin(tokens, eos)

    def _decode_step(self, tokens, attention_mask, position_ids, cache_position, finished, eos, pad, temperature,
                     noise):
        logits = self._forward(tokens[:, None], attention_mask, position_ids[:, None], cache_position)
        return self._next_tokens(logits, finished, eos, pad, temperature, noise)

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask, *, max_new_tokens: int, eos_token_ids, pad_token_id: int,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """New tokens (batch, n <= max_new_tokens); rows that finished early are padded with pad_token_id.

        input_ids/attention_mask: left-padded (batch, prompt_len) with batch <= batch_size and
        prompt_len + max_new_tokens <= max_length.
        """
        n, prompt_len = input_ids.shape
        if n > self.batch_size or prompt_len + max_new_tokens > self.max_length:
            raise ValueError(f"batch {n} x {prompt_len}+{max_new_tokens} tokens exceeds the generator's "
                             f"{self.batch_size} x {self.max_length}")
        # Pad the batch to the compiled shape (extra rows are pads, finished from the start).
        rows = self.batch_size
        ids = torch.full((rows, prompt_len), pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((rows, self.max_length), dtype=torch.long, device=self.device)
        ids[:n] = input_ids.to(self.device)
        mask[:n, :prompt_len] = attention_mask.to(self.device)
        mask[n:, prompt_len - 1] = 1  # a dummy row attends to one slot, so no row is all masked
        self.cache.reset()
        eos = torch.tensor(sorted(eos_token_ids), device=self.device)
        pad = torch.tensor(pad_token_id, device=self.device)
        temp = None if temperature <= 0 else torch.tensor(temperature, device=self.device)
        vocab = self.model.config.vocab_size

        def noise():
            if temp is None:
                return None
            u = torch.rand((rows, vocab), device=self.device, generator=generator).clamp_(1e-10, 1.0)
            return -torch.log(-torch.log(u))

        # Prefill (eager: its shape changes with the prompt length).
        positions = _positions(mask[:, :prompt_len])
        logits = self._forward(ids, mask[:, :prompt_len], positions, torch.arange(prompt_len, device=self.device))
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        finished[n:] = True
        tokens, finished = self._next_tokens(logits, finished, eos, pad, temp, noise())
        out = [tokens]
        next_position = positions[:, -1] + 1
        for step in range(1, max_new_tokens):
            slot = prompt_len + step - 1  # the cache slot the previous token goes into
            mask[:, slot] = 1
            cache_position = self.slots[slot:slot + 1]
            tokens, finished = self._decode(tokens.clone(), mask, next_position.clone(), cache_position, finished.clone(),
                                            eos, pad, temp, noise())
            tokens, finished = tokens.clone(), finished.clone()  # CUDA-graph outputs are overwritten by the next replay
            out.append(tokens)
            next_position = next_position + 1
            if step % self.check_every == 0 and bool(finished.all()):  # the only host sync
                break
        return torch.stack(out, dim=1)[:n]
