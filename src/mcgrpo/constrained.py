"""Constrained answers: generation that can only write one of the question's options, whole (completion_pick).

completion_pick shows no options (the completion_open prompt) and decodes under a constraint: at each step the
model may only continue one of the options it has not yet left, and the answer ends with the option's last token
and a newline. What it writes is then always exactly one option, and which one is the model's own choice, made by
its probabilities over the options' texts after the passage (where a small pretrained model's option log-likelihood
reads the passage better than its written answers do: benchmarks/README.md), with no list position to prefer.
Sampling stays exact: the model's distribution renormalised over the tokens the constraint allows (Gumbel-max
over the allowed tokens, each drawn once).

The state of one batch: `answer_ids` (batch, options, steps) holds each option's tokens, padded with NO_TOKEN;
`alive` (batch, options) says which options the tokens written so far still match; `step` counts the tokens
written. Both engines share `next_tokens`; StaticGenerator keeps the state in place (its CUDA graph replays the
update), the hf engine's logits processor recomputes it from the tokens written.
"""

import torch

from mcgrpo.rewards import PICK_VARIANT

NO_TOKEN = -1


def answer_tokens(tokenizer, options: list[str], end_id: int) -> list[list[int]]:
    """Each option as the tokens of its answer line: " " + its words (spacing normalised, as the prompt's cue ends
    before a space), then `end_id` (a newline, which ends a one-line answer)."""
    return [tokenizer(" " + " ".join(o.split()), add_special_tokens=False)["input_ids"] + [end_id] for o in options]


def line_end_id(tokenizer) -> int:
    """The token a one-line answer ends with: the tokenizer's newline, if it is one token."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} spells a newline as {len(ids)} "
                         "tokens; completion_pick needs it to be one")
    return ids[0]


def answer_choices(tokenizer, record: dict) -> list[list[int]]:
    """The token lists a completion_pick answer to this question must be one of: its options, each ending with a
    newline."""
    return answer_tokens(tokenizer, record["options"], line_end_id(tokenizer))


def answers_for(tokenizer, records: list[dict], variant: str) -> list | None:
    """Each record's answer_choices where the variant is completion_pick, else None (it generates freely): what
    generation.generate takes as `answers`."""
    return [answer_choices(tokenizer, r) for r in records] if variant == PICK_VARIANT else None


def answer_tensor(rows: list[list[list[int]]], steps: int, device=None) -> torch.Tensor:
    """(batch, options, steps) of answer_tokens rows, padded with NO_TOKEN; an empty row (no options) allows
    anything. Tokens past `steps` are dropped: an option longer than the answer budget is cut like any line."""
    width = max((len(r) for r in rows), default=1) or 1
    out = torch.full((len(rows), width, steps), NO_TOKEN, dtype=torch.long)
    for b, options in enumerate(rows):
        for k, ids in enumerate(options):
            ids = ids[:steps]
            out[b, k, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out.to(device)


def next_tokens(answer_ids: torch.Tensor, alive: torch.Tensor, step: torch.Tensor):
    """(tokens, allowed), both (batch, options): each option's token at `step` (a 0-dim long tensor), and whether
    it may be written now: the option is still matched, has a token there, and no earlier option already offers
    the same token (so each token is drawn once: two options that begin alike share its probability, not double
    it). Past the last step nothing is allowed (StaticGenerator's graph warm-up steps run past a short budget)."""
    b, k, n = answer_ids.shape
    tokens = answer_ids.gather(2, step.clamp(max=n - 1).view(1, 1, 1).expand(b, k, 1)).squeeze(2)
    allowed = alive & (tokens != NO_TOKEN) & (step < n)
    earlier = torch.ones(k, k, dtype=torch.bool, device=tokens.device).tril(-1)  # [i, j]: option j comes before i
    same = (tokens[:, :, None] == tokens[:, None, :]) & allowed[:, None, :] & earlier
    return tokens.clamp(min=0), allowed & ~same.any(-1)


def constrained_pick(logits, free_pick, answer_ids, alive, step, temperature=None, uniform=None):
    """The next token of each row under the constraint, and the step's state update (alive and step, in place).

    Greedy, or with `uniform` noise the Gumbel-max sample at `temperature`, over the allowed tokens only: the
    model's own distribution renormalised over them. A row with nothing allowed (no options, or its answer over)
    takes `free_pick`, the unconstrained token (finished rows are padded by the caller anyway).
    """
    tokens, allowed = next_tokens(answer_ids, alive, step)
    # finite scores, so an allowed token always beats a disallowed one (-inf) even where the model's logit is -inf
    scores = logits.gather(1, tokens).float().nan_to_num(nan=-1e30, posinf=1e30, neginf=-1e30)
    if uniform is not None:
        scores = scores / temperature - torch.log(-torch.log(uniform.gather(1, tokens).clamp(min=1e-10)))
    choice = scores.masked_fill(~allowed, float("-inf")).argmax(-1, keepdim=True)
    picked = torch.where(allowed.any(-1), tokens.gather(1, choice).squeeze(1), free_pick)
    alive &= tokens == picked[:, None]
    step += 1
    return picked


class AllowedAnswers:
    """A transformers LogitsProcessor for `model.generate` (the hf engine): every token outside the options'
    continuations gets -inf. Stateless: which options are still matched is read from the tokens written so far."""

    def __init__(self, answer_ids: torch.Tensor, prompt_length: int):
        self.answer_ids, self.prompt_length = answer_ids, prompt_length

    def __call__(self, input_ids, scores):
        written = input_ids[:, self.prompt_length:]
        step = written.shape[1]
        b, k, steps = self.answer_ids.shape
        if step >= steps:
            return scores
        prefix = self.answer_ids[:, :, :step]
        alive = (prefix == written[:, None, :]).all(-1)
        tokens, allowed = next_tokens(self.answer_ids, alive, torch.tensor(step, device=scores.device))
        mask = torch.zeros_like(scores, dtype=torch.int32).scatter_add_(1, tokens, allowed.int()) > 0
        mask |= ~allowed.any(-1, keepdim=True)  # nothing to constrain: leave the row as it is
        return scores.masked_fill(~mask, float("-inf"))
