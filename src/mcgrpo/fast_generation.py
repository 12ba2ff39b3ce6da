"""A static-shape decode loop: a static KV cache, a decode step compiled per layer kind and replayed as a CUDA graph.

`model.generate` spends most of each decode step outside the GPU at Gemma 3 1B's size: Python
logits processors and stopping criteria, and a device-to-host sync every token to ask whether all
sequences are done. Here the step (forward, then greedy or temperature sampling) runs over fixed-address
tensors, its decoder layers compiled, and is recorded once as a CUDA graph and replayed once per token; the
host only queues work, and checks for "all finished" every `check_every` tokens.

Greedy output is token-for-token the same as `model.generate(do_sample=False)` on the same batch
(tested in float32 on CPU, eager and compiled, and compiled with CUDA graphs on the GPU). top-p/top-k are
not supported: callers fall back to `generate`. Answers constrained to the options (completion_pick,
mcgrpo.constrained) run inside the same step.
"""

import contextlib
import copy
import functools

import torch

from mcgrpo.constrained import NO_TOKEN, constrained_pick
from mcgrpo.patches import attention_for_call, gemma3_attention_parts, layer_forwards, raise_recompile_limit

GQA_ATTENTION = "mcgrpo_grouped_attention"
FLEX_ATTENTION = "mcgrpo_grouped_flex_attention"


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
        # Rows are (head, position) pairs now: spell the causal mask out per row, aligned as SDPA's is_causal
        # aligns it (query i sees keys 0..i). HF leaves the mask out for an unpadded prefill into a static
        # cache, whose keys run past the prompt to the cache's end; aligning to the end instead would let
        # the prompt see empty slots.
        positions = torch.arange(q_len, device=query.device).repeat(group)
        mask = positions[:, None] >= torch.arange(key.shape[-2], device=query.device)
    return q, mask


def grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """Grouped-query attention without copying K/V per query head.

    HF's sdpa path repeats each KV head for its query heads whenever there is a mask (every padded or
    sliding-window step): Gemma 3 1B has 4 query heads on 1 KV head, so each decode step wrote and read
    4 copies of the whole KV cache. Here a group's query heads become extra query rows against their one
    KV head: the same arithmetic, one read of K and V.

    A one-token decode step is two matmuls and a softmax, which inductor fuses well: SDPA's fused kernels
    tile the queries by 64 rows and a decode step has 4, so most of each tile is wasted (measured in
    benchmarks/README.md). Longer inputs (prefill, training) use SDPA.
    """
    q, mask = grouped_query_and_mask(query, key, attention_mask, is_causal)
    if query.shape[2] == 1:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = torch.matmul(q, key.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(value.dtype), value)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(query.shape).transpose(1, 2).contiguous(), None


def flex_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                          **kwargs):
    """grouped_attention with FlexAttention for one-token decode steps: under torch.compile it runs its decoding
    kernel, which splits the keys across thread blocks and reads K and V once in one kernel, where the matmul path
    is two matmuls and a softmax apart. The mask (bool or additive, one row per sequence) is a score_mod."""
    if query.shape[2] != 1:
        return grouped_attention(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    from torch.nn.attention.flex_attention import flex_attention

    mask = None if attention_mask is None else attention_mask[:, 0, 0, : key.shape[-2]]

    def score_mod(score, b, h, q_idx, kv_idx):
        if mask is None:
            return score
        if mask.dtype == torch.bool:
            return torch.where(mask[b, kv_idx], score, -float("inf"))
        return score + mask[b, kv_idx]

    out = flex_attention(query, key, value, score_mod=score_mod, enable_gqa=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register_grouped_attention(decode_attention: str = "matmul") -> str:
    """Register grouped_attention (same results as sdpa, less memory traffic), or with decode_attention "flex"
    flex_decode_attention, with transformers; its attention implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if decode_attention not in ("matmul", "flex"):
        raise ValueError(f"decode_attention={decode_attention!r}: matmul or flex")
    name, function = (FLEX_ATTENTION, flex_decode_attention) if decode_attention == "flex" else \
        (GQA_ATTENTION, grouped_attention)
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def use_grouped_attention(model, decode_attention: str = "matmul") -> None:
    """Switch a model's attention to register_grouped_attention's, for every later call."""
    model.set_attn_implementation(register_grouped_attention(decode_attention))


def _is_any_of(tokens, eos):
    """torch.isin without its sync: for more than a few elements isin sorts and calls unique, which waits for
    the GPU (at batch 128 that stalled the host on every decode step)."""
    return (tokens[:, None] == eos[None, :]).any(-1)


def _positions(attention_mask):
    """Position ids as HF computes them for left-padded rows (pads get 1)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def layer_kinds(config) -> list[str]:
    """Each layer's attention kind ("full_attention" / "sliding_attention"), as the model's config names them."""
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return list(kinds)
    return ["full_attention"] * config.num_hidden_layers


class LayerCache:
    """One layer's K/V buffers in StaticGenerator's cache: max_length slots for a full-attention layer, a ring
    of `sliding_window` slots for a sliding-window layer (Gemma 3 1B: 22 of 26 layers, window 512).

    Position p of a sliding layer lives in slot p % window, so a decode step reads `window` slots there, not
    max_length: at RACE lengths (prompts up to ~1,200 tokens + 256 new) that halves the attention's reads.
    Attention is a sum over keys, so their order in the buffer does not matter; the mask says which slots hold
    positions inside the window (StaticGenerator.decode_masks). HF's sliding-window cache gets the same memory
    by rolling its whole window one slot on every step: a copy of the window per layer per token.

    `position` is the generator's step position (a tensor at a fixed address, so a CUDA graph replays writes
    to the right slot). A multi-token update is a prefill from position 0: it returns the prompt's own K/V
    (the prefill attends over the prompt, not the empty rest of the cache) and stores what later steps see.
    While `spread` is set (a prefill of distinct prompts only: StaticGenerator._prefill), cache row i stores the
    prefilled row spread[i].
    """

    is_compileable = True

    def __init__(self, batch_size, kv_heads, slots, head_dim, dtype, device, position: torch.Tensor):
        self.keys = torch.zeros(batch_size, kv_heads, slots, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros(batch_size, kv_heads, slots, head_dim, dtype=dtype, device=device)
        self.slots, self.position, self.spread = slots, position, None
        torch._dynamo.mark_static_address(self.keys)  # written in place by every replay of the CUDA graph
        torch._dynamo.mark_static_address(self.values)

    def update(self, key, value, *args, **kwargs):
        length, n = key.shape[-2], self.slots
        if length > 1:
            keep = min(length, n)
            slots = torch.arange(length - keep, length, device=key.device) % n
            stored_keys, stored_values = key[:, :, length - keep:], value[:, :, length - keep:]
            if self.spread is not None:
                stored_keys, stored_values = stored_keys[self.spread], stored_values[self.spread]
            self.keys.index_copy_(2, slots, stored_keys)
            self.values.index_copy_(2, slots, stored_values)
            return key, value
        slot = self.position % n
        self.keys.index_copy_(2, slot, key)
        self.values.index_copy_(2, slot, value)
        return self.keys, self.values


class DecodeCache:
    """The cache the model is given: each layer's update goes to its LayerCache."""

    is_compileable = True

    def __init__(self, config, batch_size: int, max_length: int, dtype, device, position: torch.Tensor):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        window = getattr(config, "sliding_window", None)
        self.layers = [LayerCache(batch_size, config.num_key_value_heads,
                                  min(window, max_length) if kind == "sliding_attention" and window else max_length,
                                  head_dim, dtype, device, position) for kind in layer_kinds(config)]

    def update(self, key, value, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key, value)

    @contextlib.contextmanager
    def spreading(self, spread: torch.Tensor | None):
        """Within: a prefill's row j fills every cache row i with spread[i] == j (None: row i fills row i)."""
        for layer in self.layers:
            layer.spread = spread
        try:
            yield
        finally:
            for layer in self.layers:
                layer.spread = None


def distinct_rows(ids: torch.Tensor, mask: torch.Tensor):
    """(first, spread) for a batch of prompts where some rows repeat: the index of the first row of each distinct
    (ids, mask) row, and for every row which of those it is (first[spread] repeats each row's prompt); (None, None)
    when every row is distinct. GRPO's rollouts hold num_generations copies of each prompt, so the prefill runs one
    copy each and the cache spreads it (a sync: the count of distinct rows sizes the prefill)."""
    rows = torch.cat([ids, mask.to(ids.dtype)], dim=1)
    distinct, spread = torch.unique(rows, dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return None, None
    order = torch.arange(rows.shape[0], device=ids.device)
    first = torch.full((distinct.shape[0],), rows.shape[0], device=ids.device).scatter_reduce_(0, spread, order,
                                                                                                 "amin")
    return first, spread


def _is_lora_linear(module) -> bool:
    """A peft LoRA Linear whose delta merges into its base weight (plain LoRA: not DoRA, not merged already)."""
    if not (hasattr(module, "get_delta_weight") and hasattr(module, "get_base_layer")):
        return False
    return (type(module.get_base_layer()) is torch.nn.Linear and not getattr(module, "merged", False)
            and not any(getattr(module, "use_dora", {}).values()))


def _base(module):
    return module.get_base_layer() if _is_lora_linear(module) else module


def _stacked_weight(sources: list, merged: list) -> torch.nn.Parameter:
    """A frozen weight the size of the sources' weights stacked by rows, appended to `merged` as (weight, sources)
    for refresh_merged to fill."""
    bases = [_base(m) for m in sources]
    like = bases[0].weight
    weight = torch.nn.Parameter(torch.empty((sum(b.out_features for b in bases), bases[0].in_features),
                                            dtype=like.dtype, device=like.device), requires_grad=False)
    merged.append((weight, sources))
    return weight


def _fusable(projections: list, merge_lora: bool) -> bool:
    """Bias-free Linears (LoRA Linears too, where their deltas may be merged) of one input: one matmul can do them."""
    plain = [type(_base(m)) is torch.nn.Linear and _base(m).bias is None and (merge_lora or not _is_lora_linear(m))
             for m in projections]
    return all(plain) and len({_base(m).in_features for m in projections}) == 1


class FusedGemma3Attention(torch.nn.Module):
    """Gemma3Attention's forward (transformers 5.x, eval) with q, k and v as one matmul over a stacked weight.

    In a decode step each projection is a small, latency-bound matmul (Gemma 3 1B: k and v are 1152 x 256 each), so
    three launches cost about what one three times larger does (benchmarks/README.md). q_norm, k_norm and the
    attention function are the original's; o_proj is its twin.
    """

    def __init__(self, attention, merged: list, twin):
        super().__init__()
        self.config, self.layer_idx, self.head_dim = attention.config, attention.layer_idx, attention.head_dim
        self.scaling, self.sliding_window = attention.scaling, attention.sliding_window
        self.is_causal = attention.is_causal
        self.num_key_value_groups, self.attention_dropout = attention.num_key_value_groups, 0.0
        projections = [attention.q_proj, attention.k_proj, attention.v_proj]
        self.sizes = [_base(m).out_features for m in projections]
        self.qkv = _stacked_weight(projections, merged)
        self.q_norm, self.k_norm, self.o_proj = attention.q_norm, attention.k_norm, twin(attention.o_proj)
        self.rotate, self.attention_function = gemma3_attention_parts()
        self.train(False)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query, key, value = torch.nn.functional.linear(hidden_states, self.qkv).split(self.sizes, dim=-1)
        query = self.q_norm(query.view(hidden_shape).transpose(1, 2))
        key = self.k_norm(key.view(hidden_shape).transpose(1, 2))
        value = value.view(hidden_shape).transpose(1, 2)
        query, key = self.rotate(query, key, *position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        out, weights = self.attention_function(self.config)(self, query, key, value, attention_mask, dropout=0.0,
                                                            scaling=self.scaling, sliding_window=self.sliding_window,
                                                            **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class FusedGemma3MLP(torch.nn.Module):
    """Gemma3MLP with gate and up as one matmul over a stacked weight; down_proj is its twin."""

    def __init__(self, mlp, merged: list, twin):
        super().__init__()
        self.act_fn, self.gate_up = mlp.act_fn, _stacked_weight([mlp.gate_proj, mlp.up_proj], merged)
        self.down_proj = twin(mlp.down_proj)
        self.train(False)

    def forward(self, x):
        gate, up = torch.nn.functional.linear(x, self.gate_up).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def _fused(module, merged: list, twin, merge_lora: bool):
    """module's fused twin (FusedGemma3Attention / FusedGemma3MLP), or None where it is neither or cannot fuse."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention, Gemma3MLP

    if isinstance(module, Gemma3Attention) and _fusable([module.q_proj, module.k_proj, module.v_proj], merge_lora):
        return FusedGemma3Attention(module, merged, twin)
    if isinstance(module, Gemma3MLP) and _fusable([module.gate_proj, module.up_proj], merge_lora):
        return FusedGemma3MLP(module, merged, twin)
    return None


def merged_twin(module, merged: list, merge_lora: bool = True, fuse: bool = False):
    """`module` itself where nothing inside it changes; otherwise a shallow copy whose children are twins:
    - with merge_lora, each LoRA Linear is a plain Linear over a weight buffer of its own (base + LoRA delta);
    - with fuse, each Gemma 3 attention (q/k/v) and MLP (gate/up) runs its input projections as one matmul
      over a stacked weight buffer (FusedGemma3Attention, FusedGemma3MLP).
    Every buffer is appended to `merged` as (buffer, source Linears) for refresh_merged to fill. The original
    keeps its own layers (training uses them).

    Why merge: each LoRA Linear adds two thin matmuls and an add to every decode step (Gemma 3 1B: 7 per layer, so
    364 more matmuls a step), for a delta that changes only once per optimizer step. The cost is one more copy of
    the adapted weights; fusing costs one more copy of the fused projections' weights where there is no LoRA.
    """
    def twin(child):
        return merged_twin(child, merged, merge_lora, fuse)

    if merge_lora and _is_lora_linear(module):
        base = module.get_base_layer()
        linear = torch.nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
        linear.weight = _stacked_weight([module], merged)
        linear.bias = base.bias
        linear.train(False)
        return linear
    fused = _fused(module, merged, twin, merge_lora) if fuse else None
    if fused is not None:
        return fused
    children = {name: twin(child) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    copied = copy.copy(module)  # shares parameters, buffers and config with the original
    copied._modules = {**module._modules, **children}  # but has its own children table
    copied.training = False
    return copied


def _linear_weight(module) -> torch.Tensor:
    """The weight a Linear's forward applies, in float32: for a LoRA Linear, base + the active adapters' deltas
    (base alone while its adapters are disabled)."""
    total = _base(module).weight.float()
    if _is_lora_linear(module) and not module.disable_adapters:
        for name in module.active_adapters:
            if name in module.lora_A:
                total = total + module.get_delta_weight(name).float()
    return total


@torch.no_grad()
def refresh_merged(merged: list) -> None:
    """Fill each twin buffer with its source Linears' current weights, stacked (each summed in float32 and rounded
    once to the buffer's dtype)."""
    for weight, sources in merged:
        weight.copy_(torch.cat([_linear_weight(m) for m in sources]))


def _routed_forward(compiled_layer, layer, cache, hidden_states, past_key_values=None, **kwargs):
    return compiled_layer(layer, hidden_states, cache, **kwargs)


def _decode_layer(layer, hidden_states, cache, **kwargs):
    """One decoder layer over its own LayerCache, compiled (see StaticGenerator: compiled once per layer kind)."""
    return type(layer).forward(layer, hidden_states, past_key_values=cache, **kwargs)


def _prefill_layer(layer, hidden_states, cache, **kwargs):
    """The same for prefills: a separate function, so its dynamic-shape compilations are cached apart."""
    return type(layer).forward(layer, hidden_states, past_key_values=cache, **kwargs)


def prefill_masks(attention_mask, kinds: list[str], window: int | None):
    """Boolean (batch, 1, len, len) masks over the prompt for a left-padded prefill, per layer kind.

    Slot differences equal position differences between real tokens, so the window is a slot difference.
    A pad query sees itself: a row with no key at all would give NaN, and its NaN values would reach real
    rows through their zero attention weights (0 * NaN).
    """
    length = attention_mask.shape[-1]
    q = torch.arange(length, device=attention_mask.device)[:, None]
    k = torch.arange(length, device=attention_mask.device)[None, :]
    full = ((k <= q) & attention_mask.bool()[:, None, None, :]) | (k == q)
    return masks_by_kind(full, full & (q - k < window) if window else full, kinds)


def masks_by_kind(full, sliding, kinds: list[str]):
    """What the model takes as attention_mask: one mask per layer kind where its config has layer_types."""
    if "sliding_attention" in kinds or len(set(kinds)) > 1:
        return {"full_attention": full, "sliding_attention": sliding}
    return full


class StaticGenerator:
    """Generate for batches of left-padded prompts with a static KV cache.

    One instance serves many batches of the same (batch size, max length) shape: the compiled step, its
    CUDA graphs and the cache are reused, so compile time is paid once per instance, not per batch.
    fuse_projections: Gemma 3's q/k/v and gate/up as one matmul each (merged_twin); decode_attention: "matmul"
    (grouped_attention) or "flex" (flex_decode_attention) for the one-token steps.
    """

    def __init__(self, model, *, batch_size: int, max_length: int, compile: bool | None = None, check_every: int = 32,
                 grouped_attention: bool = True, compile_mode: str | None = None, compile_prefill: bool = False,
                 merge_lora: bool = True, fuse_projections: bool = True, decode_attention: str = "matmul"):
        config = model.config
        self.kinds = layer_kinds(config)
        window = getattr(config, "sliding_window", None)
        if window and window < max_length and not getattr(config, "layer_types", None):
            raise ValueError(f"{type(model).__name__}: a sliding window ({window}) without per-layer "
                             "layer_types in its config is not supported by the static engine; use the hf engine")
        self.window = window if "sliding_attention" in self.kinds else None
        grouped = grouped_attention and config.num_attention_heads != config.num_key_value_heads
        # the attention this generator's calls run (None: the model's own); the model runs its own outside them,
        # so a policy's training forward keeps the attention it was given
        self._attention = register_grouped_attention(decode_attention) if grouped or decode_attention == "flex" \
            else None
        self.model, self.batch_size, self.max_length, self.check_every = model, batch_size, max_length, check_every
        self.device = next(model.parameters()).device
        compile = self.device.type == "cuda" if compile is None else compile
        self.cuda_graphs = compile and self.device.type == "cuda"  # the GPU tests cover graphs of the compiled step
        # Regional compilation: each decoder layer runs through one compiled function that takes the layer and its
        # LayerCache as arguments, so inductor compiles one graph per layer kind (sliding, full) and every layer of
        # that kind reuses it, instead of every layer traced and lowered one by one in a whole-step graph (a long
        # warm-up); the glue around the layers (embedding, rotary, masks, final norm, lm_head, token pick) stays
        # eager, and the CUDA graph below records all of it.
        # This class captures the step in a CUDA graph itself: torch.compile's own CUDA graphs (mode=
        # "reduce-overhead") check every static input (each weight, each cache tensor) in Python on every call,
        # which can take the host longer per token than the GPU's work. compile_mode (e.g.
        # "max-autotune-no-cudagraphs") tunes the kernels.
        self._decode_layer = self._prefill_layer = None
        self._decoder_layers = list(model.get_decoder().layers)
        # The layers run as twins (merged_twin): with merge_lora their LoRA Linears are plain Linears over merged
        # weights, with fuse_projections each Gemma 3 layer's q/k/v and gate/up are one matmul each; the buffers are
        # refreshed at the start of every generate call (so they follow the optimizer's updates between GRPO steps).
        self._merged = []
        self._run_layers = [merged_twin(layer, self._merged, merge_lora, fuse_projections)
                            for layer in self._decoder_layers]
        if compile:
            raise_recompile_limit(64)
            self._decode_layer = torch.compile(_decode_layer, mode=compile_mode, fullgraph=True)
            # compile_prefill: the prefill through compiled layers too, for any prompt length (dynamic shapes).
            self._prefill_layer = torch.compile(_prefill_layer, dynamic=True, fullgraph=True) if compile_prefill \
                else None
        # The step's inputs live at fixed addresses, updated in place between steps: a CUDA graph replays reads
        # of exactly these tensors. Nothing is copied from the host per token (a blocking copy per token made
        # the host wait for every step).
        long = dict(dtype=torch.long, device=self.device)
        self._tokens = torch.zeros(batch_size, **long)
        self._mask = torch.zeros((batch_size, max_length), **long)
        self._positions = torch.zeros(batch_size, **long)
        self._cache_position = torch.zeros(1, **long)
        self._temperature = torch.ones((), device=self.device)
        self._uniform = None  # (batch, vocab) noise for sampling, allocated on the first sampling call
        # A constrained call's state (constrained.constrained_pick): each row's option tokens, which options the row
        # still matches, and the answer's step; None while unconstrained. Fixed addresses, like the inputs above.
        self._answers = None
        self.cache = DecodeCache(config, batch_size, max_length, model.get_input_embeddings().weight.dtype,
                                 self.device, self._cache_position)
        self._ring = torch.arange(min(self.window or max_length, max_length), **long)  # a sliding layer's slots
        self._graphs = {}  # (sampling, constrained answers' shape or None) -> (CUDAGraph, its output tensor)
        self._marks = []  # (start, prefilled, end) CUDA events of each call, read by seconds()

    def decode_graph(self):
        """The recorded CUDA graph of the greedy decode step (None until one is recorded, or on a CPU), for
        benchmarks that time its replays alone."""
        return self._graphs.get((False, None), (None,))[0]

    def set_cache_position(self, position: int) -> None:
        """Where the next decode step writes (benchmarks replay one step at a fixed slot)."""
        self._cache_position.fill_(position)

    def greedy_step(self):
        """One greedy decode step on the current inputs, run directly (compiled where compile is on, outside any
        CUDA graph): what benchmarks profile kernel by kernel."""
        with attention_for_call(self.model, self._attention):
            return self._step(*self._step_inputs(False))

    def decode_masks(self):
        """Boolean masks of one decode step, per layer kind: (batch, 1, 1, slots).

        Full layers: the slots written so far that are not padding. Sliding layers: slot s of the ring holds
        the latest position p <= the current one with p % window == s; it is seen if p >= 0 and not padding.
        """
        full = self._mask.bool()[:, None, None, :]
        if self._ring.numel() == self.max_length:  # the window covers everything the cache can hold
            return masks_by_kind(full, full, self.kinds)
        window = self._ring.numel()
        position = self._cache_position - (self._cache_position - self._ring) % window
        seen = self._mask.gather(1, position.clamp(min=0).expand(self._mask.shape[0], window)).bool()
        sliding = (seen & (position >= 0))[:, None, None, :]
        return masks_by_kind(full, sliding, self.kinds)

    def _forward(self, input_ids, masks, position_ids, compiled_layer=None):
        """Last-position logits; each decoder layer (or its merged twin) runs through compiled_layer, or uncompiled,
        with its LayerCache; with neither a compiled layer nor twins, the model runs as it is."""
        def run():
            return self.model(input_ids=input_ids, attention_mask=masks, position_ids=position_ids,
                              past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]

        if compiled_layer is None and not self._merged:
            return run()
        routed = [functools.partial(_routed_forward, compiled_layer or _prefill_layer, layer, cache)
                  for layer, cache in zip(self._run_layers, self.cache.layers)]
        with layer_forwards(self._decoder_layers, routed):  # for this call only
            return run()

    @staticmethod
    def _pick(logits, temperature, uniform):
        """Greedy tokens, or (uniform noise given) a sample from softmax(logits / T) by the Gumbel-max trick.

        A NaN logit is never picked (argmax would pick it: NaN compares as the largest); +inf stays the pick.
        The Gumbel-max trick draws with argmax, so no non-finite value can make it fail the way
        torch.multinomial's device-side assert does.
        """
        logits = logits.masked_fill(logits.isnan(), float("-inf"))
        if uniform is None:
            return logits.argmax(-1)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-10)))
        return (logits.float() / temperature + gumbel).argmax(-1)

    def _step(self, tokens, positions, temperature, uniform):
        logits = self._forward(tokens[:, None], self.decode_masks(), positions[:, None], self._decode_layer)
        return self._pick_answer(logits, temperature, uniform)

    def _pick_answer(self, logits, temperature, uniform):
        """_pick, under the call's answer constraint where there is one."""
        picked = self._pick(logits, temperature, uniform)
        if self._answers is None:
            return picked
        return constrained_pick(logits, picked, *self._answers, temperature=temperature, uniform=uniform)

    def _step_inputs(self, sampling: bool):
        return (self._tokens, self._positions, self._temperature if sampling else None,
                self._uniform if sampling else None)

    def _capture(self, sampling: bool):
        """Compile the step's layers (on the first warm-up run), then record the step as a CUDA graph.

        The warm-up runs write junk K/V into the current step's slots; the real replay overwrites them.
        """
        inputs = self._step_inputs(sampling)
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graph capture requires
            for _ in range(2):
                self._step(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._step(*inputs)
        return graph, output

    def _decode(self, sampling: bool) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._step(*self._step_inputs(sampling))
        key = (sampling, None if self._answers is None else tuple(self._answers[0].shape))
        if key not in self._graphs:
            state = None if self._answers is None else [t.clone() for t in self._answers]
            self._graphs[key] = self._capture(sampling)
            if state is not None:  # the warm-up steps advanced the constraint: put it back
                for buffer, saved in zip(self._answers, state):
                    buffer.copy_(saved)
        graph, output = self._graphs[key]
        graph.replay()
        return output  # overwritten by the next replay: read it before then

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask, *, max_new_tokens: int, eos_token_ids, pad_token_id: int,
                 temperature: float = 0.0, generator: torch.Generator | None = None,
                 answers: torch.Tensor | None = None) -> torch.Tensor:
        """New tokens (batch, n <= max_new_tokens); rows that finished early are padded with pad_token_id.

        input_ids/attention_mask: left-padded (batch, prompt_len) with batch <= batch_size and
        prompt_len + max_new_tokens <= max_length. Sampling noise comes from `generator`, else from torch's
        global RNG. answers: (batch, options, steps) option tokens (constrained.answer_tensor) that each row's
        answer must be one of; each should end with an eos token, or the row runs on unconstrained after it.
        """
        n, prompt_len = input_ids.shape
        if n > self.batch_size or prompt_len + max_new_tokens > self.max_length:
            raise ValueError(f"batch {n} x {prompt_len}+{max_new_tokens} tokens exceeds the generator's "
                             f"{self.batch_size} x {self.max_length}")
        with attention_for_call(self.model, self._attention):
            return self._generate(input_ids, attention_mask, max_new_tokens, eos_token_ids, pad_token_id, temperature,
                                  generator, answers)

    def _generate(self, input_ids, attention_mask, max_new_tokens, eos_token_ids, pad_token_id, temperature,
                  generator, answers):
        n, prompt_len = input_ids.shape
        refresh_merged(self._merged)
        ids = self._load_prompts(input_ids, attention_mask, pad_token_id)
        self._load_answers(answers, n)
        eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=self.device)
        noise = self._noise(temperature, generator)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if self.device.type == "cuda" else None
        if marks:
            marks[0].record()
        tokens, finished = self._prefill(ids, n, pad_token_id, eos, noise)
        if marks:
            marks[1].record()
        out = self._decode_loop(tokens, finished, prompt_len, max_new_tokens, pad_token_id, eos, noise)
        if marks:
            marks[2].record()
            self._marks.append(marks)
        return torch.stack(out, dim=1)[:n]

    def _load_prompts(self, input_ids, attention_mask, pad_token_id: int):
        """The prompts padded to the compiled batch (extra rows are pads, finished from the start) and their
        mask written into the step's mask."""
        n, prompt_len = input_ids.shape
        ids = torch.full((self.batch_size, prompt_len), pad_token_id, dtype=torch.long, device=self.device)
        ids[:n] = input_ids.to(self.device)
        self._mask.zero_()
        self._mask[:n, :prompt_len] = attention_mask.to(self.device)
        self._mask[n:, prompt_len - 1] = 1  # a dummy row attends to one slot, so no row is all masked
        return ids

    def _load_answers(self, answers, n: int) -> None:
        """The call's answer constraint into its fixed buffers (rows past n, padding, allow anything), or none."""
        if answers is None:
            self._answers = None
            return
        shape = (self.batch_size, *answers.shape[1:])
        if self._answers is None or tuple(self._answers[0].shape) != shape:
            self._answers = (torch.empty(shape, dtype=torch.long, device=self.device),
                             torch.empty(shape[:2], dtype=torch.bool, device=self.device),
                             torch.zeros((), dtype=torch.long, device=self.device))
        ids, alive, step = self._answers
        ids.fill_(NO_TOKEN)
        ids[:n] = answers.to(self.device)
        alive.fill_(True)
        step.zero_()

    def _noise(self, temperature: float, generator):
        """A function that refills the sampling noise in place and returns it; None when greedy."""
        if temperature <= 0:
            return None
        self._temperature.fill_(temperature)
        if self._uniform is None:
            self._uniform = torch.empty((self.batch_size, self.model.config.vocab_size), device=self.device)

        def refill():
            torch.rand(self._uniform.shape, out=self._uniform, generator=generator, device=self.device)
            return self._uniform
        return refill

    def _prefill(self, ids, n: int, pad_token_id: int, eos, noise):
        """The prompts through the model into the cache (each distinct prompt once: distinct_rows); the first new
        tokens, and which rows have finished."""
        prompt_len = ids.shape[1]
        mask = self._mask[:, :prompt_len]
        positions = _positions(mask)
        first, spread = distinct_rows(ids, mask)
        if first is None:
            logits = self._forward(ids, prefill_masks(mask, self.kinds, self.window), positions, self._prefill_layer)
        else:  # each distinct prompt once, its K/V spread to every row that repeats it
            with self.cache.spreading(spread):
                logits = self._forward(ids[first], prefill_masks(mask[first], self.kinds, self.window),
                                       positions[first], self._prefill_layer)[spread]
        finished = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        finished[n:] = True
        tokens = torch.where(finished, pad_token_id,
                             self._pick_answer(logits, self._temperature, noise() if noise else None))
        self._tokens.copy_(tokens)
        self._positions.copy_(positions[:, -1] + 1)
        self._cache_position.fill_(prompt_len)
        return tokens, finished | _is_any_of(tokens, eos)

    def _decode_loop(self, tokens, finished, prompt_len: int, max_new_tokens: int, pad_token_id: int, eos, noise):
        """One decode step per new token (a CUDA graph replay where recorded), until max_new_tokens or every row
        has finished (checked every check_every steps: the only host sync)."""
        out = [tokens]
        for step in range(1, max_new_tokens):
            self._mask[:, prompt_len + step - 1] = 1  # the previous token's cache slot
            if noise:
                noise()
            tokens = torch.where(finished, pad_token_id, self._decode(noise is not None))
            finished = finished | _is_any_of(tokens, eos)
            out.append(tokens)
            self._tokens.copy_(tokens)
            self._positions.add_(1)
            self._cache_position.add_(1)
            if step % self.check_every == 0 and bool(finished.all()):
                break
        return out

    def seconds(self) -> dict:
        """GPU seconds spent in prefill and in decoding over every call so far (CUDA only; waits for the GPU)."""
        if self._marks:
            torch.cuda.synchronize(self.device)
        return {"prefill_s": sum(a.elapsed_time(b) for a, b, _ in self._marks) / 1000,
                "decode_s": sum(b.elapsed_time(c) for _, b, c in self._marks) / 1000, "calls": len(self._marks)}
