"""GRPO's log-prob passes with each prompt computed once for all of its completions (train.shared_prompts).

A GRPO group is one prompt and num_generations completions of it. TRL's forward runs each completion as its own row,
prompt included, so at RACE lengths (prompts ~1,300 tokens, completions 256) a group of 8 is ~12,400 tokens of
which ~10,400 are the same prompt eight times. Here a group is one row: the prompt once (left-padded to the chunk's
longest), then one segment per completion, each segment attending to the prompt and to itself only, at the positions
it has in its own sequence:

    row:        pad .. p0 p1 .. p(P-2) | p(P-1) c1_0 .. c1_(C-2) | p(P-1) c2_0 .. c2_(C-2) | ...
    positions:   0  ..  0  1 .. P-2    | P-1    P    .. P+C-2    | P-1    P    .. P+C-2    | ...
    scores:                            | c1_0   c1_1 .. c1_(C-1) | c2_0   c2_1 .. c2_(C-1) | ...

Each segment starts with the prompt's last token, whose output scores the completion's first token, so a segment
scores exactly its completion's C tokens, and a token sees the same keys at the same relative positions as in its
own row: the log-probs (and their gradients) are TRL's, in ~(P + 8C) / 8(P + C) of the tokens (~0.27 here).

Two ways to run the attention (train.shared_prompt_attention):
- masked: the model's own attention over the whole row with a dense mask, built by transformers' mask builders with
  the segment rule and (for sliding-window layers) the window by position as `and` masks. It computes every
  (query, key) pair of the row, most of them masked.
- split: the attention of `split_attention`, two SDPA calls a layer: the prompt part alone, then each segment's
  queries against the prompt's keys and its own, batched over segments. It computes about a third of the pairs.
Padding (the shared part's left padding, empty segment slots) is segment -1: it sees only padding, so no query row is
ever fully masked (which gives NaN in some SDPA kernels), and no real token sees it.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

IGNORE = -100  # a label TRL's fused LM head does not score
SPLIT_ATTENTION = "mcgrpo_shared_prompt"  # the attention implementation name split_attention registers


@dataclass
class SharedPromptBatch:
    input_ids: torch.Tensor  # (groups, shared + slots x C)
    attention_mask: torch.Tensor  # (groups, length): 0 on completions' padding after their end (as keys)
    position_ids: torch.Tensor  # (groups, length): each token's position in its own unpacked sequence
    segments: torch.Tensor  # (groups, length): 0 the prompt, k the k-th completion, -1 padding
    shift_labels: torch.Tensor  # (groups, length): the token each position scores, IGNORE where none
    index: torch.Tensor  # (rows, C): where each input row's completion log-probs are in the flattened output
    shared: int  # length of the shared part (the prompts but their last tokens, left-padded)
    slots: int  # segments per row (the largest group; smaller groups leave slots of padding)
    segment_length: int  # C: tokens per segment (TRL's logits_to_keep)


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Rows of a batch with the same prompt (its real tokens, padding aside), in order of first appearance."""
    groups = {}
    for row, (ids, mask) in enumerate(zip(prompt_ids.tolist(), prompt_mask.tolist())):
        groups.setdefault(tuple(t for t, m in zip(ids, mask) if m), []).append(row)
    return list(groups.values())


def pack_shared_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        pad_token_id: int, multiple: int | None = None) -> SharedPromptBatch:
    """TRL's (left-padded prompt + completion) rows, one row per distinct prompt (see the module's docstring).
    `multiple`: the shared part's length is rounded up to a multiple of it (shapes that recur, as
    train.pad_to_multiple_of, which TRL applies to the completions)."""
    completion_length = logits_to_keep
    prompt_length = input_ids.shape[1] - completion_length
    prompt_mask = attention_mask[:, :prompt_length]
    if not bool(prompt_mask.any(-1).all()):
        raise ValueError("a row with no prompt token: nothing to score its first completion token from")
    groups = prompt_groups(input_ids[:, :prompt_length], prompt_mask)
    starts = prompt_mask.long().argmax(-1).tolist()  # the left padding's end: the prompt's first real token
    shared = max(prompt_length - starts[rows[0]] - 1 for rows in groups)
    if multiple:
        shared += -shared % multiple
    slots = max(len(rows) for rows in groups)
    length = shared + slots * completion_length
    width = input_ids.shape[1]
    pad_slot = input_ids.numel()  # one slot past the flattened batch: the padding token
    source = torch.full((len(groups), length), pad_slot, dtype=torch.long)  # flat index of each packed token
    label_source = torch.full((len(groups), length), pad_slot, dtype=torch.long)
    positions = torch.zeros((len(groups), length), dtype=torch.long)
    segments = torch.full((len(groups), length), -1, dtype=torch.long)
    index = torch.empty((input_ids.shape[0], completion_length), dtype=torch.long)
    steps = torch.arange(completion_length)
    for g, rows in enumerate(groups):
        first = rows[0] * width + starts[rows[0]]
        own = prompt_length - starts[rows[0]] - 1  # the prompt but its last token
        source[g, shared - own:shared] = torch.arange(first, first + own)
        positions[g, shared - own:shared] = torch.arange(own)
        segments[g, shared - own:shared] = 0
        for k, row in enumerate(rows):
            at = shared + k * completion_length
            # the prompt's last token, then the completion but its last token (which scores nothing)
            source[g, at:at + completion_length] = row * width + prompt_length - 1 + steps
            label_source[g, at:at + completion_length] = row * width + prompt_length + steps
            positions[g, at:at + completion_length] = own + steps
            segments[g, at:at + completion_length] = k + 1
            index[row] = g * length + at + steps
    device = input_ids.device
    flat_ids = torch.cat([input_ids.flatten(), input_ids.new_tensor([pad_token_id])])
    flat_mask = torch.cat([attention_mask.flatten(), attention_mask.new_zeros(1)])
    source, label_source, segments = source.to(device), label_source.to(device), segments.to(device)
    labels = flat_ids[label_source].masked_fill(flat_mask[label_source] == 0, IGNORE)
    # padding is a valid key of segment -1 (seen by padding only): no query row is left with nothing to attend to
    mask = torch.where(segments < 0, 1, flat_mask[source])
    return SharedPromptBatch(flat_ids[source], mask, positions.to(device), segments, labels, index.to(device),
                             shared, slots, completion_length)


def segment_mask_function(segments: torch.Tensor):
    """transformers' mask-function form (batch, head, query, key index -> bool): a key in the prompt, or in the
    query's own segment."""
    def visible(batch_idx, head_idx, q_idx, kv_idx):
        key = segments[batch_idx, kv_idx]
        return (key == 0) | (key == segments[batch_idx, q_idx])
    return visible


def window_mask_function(position_ids: torch.Tensor, window: int):
    """A sliding window over positions in the tokens' own sequences (transformers' is over indices in the row)."""
    def visible(batch_idx, head_idx, q_idx, kv_idx):
        return position_ids[batch_idx, q_idx] - position_ids[batch_idx, kv_idx] < window
    return visible


def supports(config) -> bool:
    """Whether the model's attention takes the dense masks built here: implementations whose masks transformers
    builds as SDPA's or eager attention's (flash attention's take a padding mask only)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    return ALL_MASK_ATTENTION_FUNCTIONS.get(config._attn_implementation) in (sdpa_mask, eager_mask)


def attention_masks(config, batch: SharedPromptBatch, dtype: torch.dtype) -> dict:
    """The per-layer-kind masks (a mapping, as Gemma 3's model takes prepared masks) for a packed batch: causal by
    index within the row, the segment rule, the keys past a completion's end masked; for sliding-window layers the
    window by position."""
    from transformers.masking_utils import and_masks, create_causal_mask

    embeds = torch.empty(*batch.input_ids.shape, 0, dtype=dtype, device=batch.input_ids.device)  # shape and dtype
    segment = segment_mask_function(batch.segments)
    masks = {}
    for kind in set(getattr(config, "layer_types", None) or ["full_attention"]):
        rule = segment
        if kind == "sliding_attention":
            rule = and_masks(segment, window_mask_function(batch.position_ids, config.sliding_window))
        masks[kind] = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                         past_key_values=None, position_ids=batch.position_ids,
                                         and_mask_function=rule)
    return masks


class SplitMasks(NamedTuple):
    """split_attention's masks for one layer kind (True: attend); the shapes give the layout."""
    prompt: torch.Tensor  # (groups, 1, shared, shared): the shared part's queries and keys
    segments: torch.Tensor  # (groups x slots, 1, C, shared + C): each segment's queries, the shared keys and its own


def _visible(batch: SharedPromptBatch, queries: torch.Tensor, keys: torch.Tensor, window: int | None) -> torch.Tensor:
    """The mask rule of attention_masks for index tensors `queries` and `keys` (broadcast to a (groups, a, q, k)
    result): causal within the row, a valid key, in the prompt or the query's own segment, within the window."""
    rows = torch.arange(batch.segments.shape[0], device=queries.device)[:, None, None, None]
    ok = (keys <= queries) & (batch.attention_mask[rows, keys] == 1) & \
        segment_mask_function(batch.segments)(rows, None, queries, keys)
    if window:
        ok &= window_mask_function(batch.position_ids, window)(rows, None, queries, keys)
    return ok


def split_masks(config, batch: SharedPromptBatch) -> dict:
    """split_attention's masks for a packed batch, per layer kind: the rule of attention_masks, on the (query, key)
    pairs split_attention computes."""
    device, shared, slots, length = batch.input_ids.device, batch.shared, batch.slots, batch.segment_length
    prompt = torch.arange(shared, device=device)
    segment_queries = shared + torch.arange(slots, device=device)[:, None] * length + torch.arange(length, device=device)
    segment_keys = torch.cat([prompt.expand(slots, shared), segment_queries], dim=1)
    masks = {}
    for kind in set(getattr(config, "layer_types", None) or ["full_attention"]):
        window = config.sliding_window if kind == "sliding_attention" else None
        masks[kind] = SplitMasks(
            _visible(batch, prompt[None, None, :, None], prompt[None, None, None, :], window),
            _visible(batch, segment_queries[None, :, :, None], segment_keys[None, :, None, :], window).flatten(0, 1)
            .unsqueeze(1))
    return masks


def split_attention(module, query, key, value, attention_mask: SplitMasks, dropout: float = 0.0, scaling=None,
                    **kwargs):
    """An attention implementation for packed batches (train.shared_prompt_attention: split): the shared part attends
    to itself, then every segment's queries, batched over (group, slot), to the shared part's keys and their own.
    The same outputs as the dense-masked row, from about a third of its (query, key) pairs at RACE lengths.
    Takes transformers' (batch, heads, length, head_dim) tensors and returns (batch, length, heads, head_dim), None."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    if not isinstance(attention_mask, SplitMasks):
        raise TypeError(f"{SPLIT_ATTENTION} attention runs the shared-prompt passes only (it was given "
                        f"{type(attention_mask).__name__}): no other model call may run while it is set")
    groups, heads, _, dim = query.shape
    shared, length = attention_mask.prompt.shape[-1], attention_mask.segments.shape[-2]
    slots = attention_mask.segments.shape[0] // groups
    if key.shape[1] != heads:  # grouped-query attention: each K/V head serves heads // kv_heads query heads
        key, value = (x.repeat_interleave(heads // x.shape[1], dim=1) for x in (key, value))

    def per_segment(x):  # (groups, heads, shared + slots x C, dim) -> (groups x slots, heads, C, dim)
        return x[:, :, shared:].unflatten(2, (slots, length)).transpose(1, 2).flatten(0, 1)

    def with_shared(x):  # each segment's keys (values) after a copy of its group's shared part
        copies = x[:, :, :shared].unsqueeze(1).expand(groups, slots, heads, shared, dim).flatten(0, 1)
        return torch.cat([copies, per_segment(x)], dim=2)

    parts = []
    if shared:
        # Contiguous copies: SDPA's backward saves its inputs, and inductor's compiled backward checks these slices
        # of the (groups, length, heads, dim) projections against a stride with the row length of the first batch it
        # compiled for, failing at the next length (tests/test_shared_prompt.py, ..._at_a_new_length).
        prompt_part = [x[:, :, :shared].contiguous() for x in (query, key, value)]
        parts.append(sdpa(*prompt_part, attn_mask=attention_mask.prompt, dropout_p=dropout, scale=scaling))
    out = sdpa(per_segment(query), with_shared(key), with_shared(value), attn_mask=attention_mask.segments,
               dropout_p=dropout, scale=scaling)
    parts.append(out.unflatten(0, (groups, slots)).transpose(1, 2).flatten(2, 3))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_split_attention() -> str:
    """Register split_attention with transformers; its attention implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SPLIT_ATTENTION, split_attention)
    AttentionMaskInterface.register(SPLIT_ATTENTION, sdpa_mask)  # never used: the masks come prepared
    return SPLIT_ATTENTION


def completion_logps(model, input_ids, attention_mask, logits_to_keep: int, batch_size: int, compute_entropy: bool,
                     *, base, pad_token_id: int, multiple: int | None = None, attention: str = "masked",
                     autocast=None):
    """(log-probs, entropies or None), each (rows, logits_to_keep), of the completions in TRL's rows, in chunks of
    batch_size rows as TRL's own pass chunks them, each chunk one row per prompt. `model` is what TRL calls (its
    forward patched with TRL's fused LM head, which takes shift_labels), `base` the transformers model inside it
    (config, dtype); `attention` masked or split (see the module's docstring); `autocast` a context factory to call
    it in."""
    import contextlib

    from mcgrpo.patches import attention_for_call

    dtype = base.get_input_embeddings().weight.dtype  # as the model's own masks are built: its embeddings' dtype
    implementation = register_split_attention() if attention == "split" else None
    logps, entropies = [], []
    for start in range(0, input_ids.shape[0], batch_size):
        batch = pack_shared_prompts(input_ids[start:start + batch_size], attention_mask[start:start + batch_size],
                                    logits_to_keep, pad_token_id, multiple)
        masks = split_masks(base.config, batch) if implementation else attention_masks(base.config, batch, dtype)
        with autocast() if autocast else contextlib.nullcontext(), attention_for_call(base, implementation):
            out = model(input_ids=batch.input_ids, attention_mask=masks, position_ids=batch.position_ids,
                        shift_labels=batch.shift_labels, fused_lm_head=True)
        logps.append(out.log_probs.flatten()[batch.index])
        if compute_entropy:
            entropies.append(out.entropy.flatten()[batch.index])
    return torch.cat(logps), torch.cat(entropies) if compute_entropy else None


def shuffle_keeping_prompts_together(batch: dict) -> dict:
    """TRL's shuffle of a generation batch before it splits it into micro-batches (trl.trainer.utils.
    shuffle_sequence_dict), by whole prompts: the rows of a prompt stay next to each other, so a micro-batch holds
    whole groups and shares their prompts. It draws TRL's one permutation of the rows (torch's global CPU generator,
    as TRL's shuffle, so a run's later draws are the same either way) and orders the prompts by their first row in
    it, each prompt's rows in its order. With loss_type dapo (the default), dr_grpo or grpo a step's gradient is the
    same however its rows are split into micro-batches; bnpo normalises per micro-batch, where this split is as
    valid as TRL's random one."""
    _, group = torch.unique(batch["prompt_ids"], dim=0, return_inverse=True)
    group = group.cpu()
    rows = len(group)
    place = torch.empty(rows, dtype=torch.long)
    place[torch.randperm(rows)] = torch.arange(rows)  # each row's place in TRL's permutation
    first = torch.full((int(group.max()) + 1,), rows).scatter_reduce(0, group, place, "amin")
    order = torch.argsort(first[group] * rows + place)

    def permute(value):
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[order.to(value.device)]
        return [value[i] for i in order.tolist()]

    return {key: permute(value) for key, value in batch.items()}
