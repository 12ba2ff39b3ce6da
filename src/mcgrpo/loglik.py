"""Generation-free accuracy: score each option by its log-likelihood as the answer.

This is how lm-evaluation-harness scores RACE ("Article: ...\\n\\nQuestion: ...\\nAnswer:" followed by
" <option text>", no chat template), so the numbers sit next to published tables. `correct` uses the
summed log-probability (lm-eval's acc), `correct_norm` the log-probability per character (acc_norm).
It is fast (one forward pass per question and a short one per option, no decoding) and needs no answer format at all.
"""

import torch
from tqdm.auto import tqdm

from mcgrpo.generation import left_pad
from mcgrpo.rewards import LETTERS

VARIANT = "loglik"


def loglik_context(record: dict) -> str:
    passage = f"Article: {record['context']}\n\n" if record.get("context") else ""
    return f"{passage}Question: {record['question']}\nAnswer:"


def option_logprobs(model, tokenizer, records: list[dict], batch_size: int = 16,
                    context=loglik_context) -> list[list[float]]:
    """Summed log-probability of " <option>" after the context (`context(record)`, loglik_context unless given),
    for every option of every record.

    The context (passage and question, most of the tokens) goes through the model once per question;
    each option then continues from a copy of its KV cache, so a passage is read once, not once per
    option. batch_size counts option sequences.
    """
    if not records:
        return []
    # one tokenizer call for all contexts and one for all options (a call per text took seconds on RACE's test set)
    contexts = tokenizer([context(r) for r in records])["input_ids"]  # with <bos>, as the model was trained
    flat = iter(tokenizer([" " + o for r in records for o in r["options"]], add_special_tokens=False)["input_ids"])
    options = [[next(flat) for _ in r["options"]] for r in records]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    scores = [None] * len(records)
    per_batch = max(1, batch_size // max(len(o) for o in options))  # questions per batch
    order = sorted(range(len(records)), key=lambda i: -len(contexts[i]))  # similar lengths together: less padding
    with torch.inference_mode(), tqdm(total=sum(map(len, options)), desc="log-likelihood", unit="option") as bar:
        for start in range(0, len(records), per_batch):
            batch = order[start:start + per_batch]
            ctx, opts = [contexts[i] for i in batch], [options[i] for i in batch]
            # Left-padded contexts end together, so every option continues at the same cache slot.
            ids, ctx_mask = left_pad(ctx, pad, device)
            # Positions count from each row's first real token (as unpadded), so the options can continue them.
            out = model(input_ids=ids, attention_mask=ctx_mask, position_ids=(ctx_mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each option's first token
            rows = [(q, o) for q, qo in enumerate(opts) for o in qo]
            which = torch.tensor([q for q, _ in rows], device=device)
            cache = out.past_key_values
            cache.batch_select_indices(which)  # one copy of its question's context per option
            # Options right-padded: pads come after every token that is read.
            span = max(len(o) for _, o in rows)
            opt_ids = torch.tensor([o + [pad] * (span - len(o)) for _, o in rows], device=device)
            opt_mask = torch.tensor([[1] * len(o) + [0] * (span - len(o)) for _, o in rows], device=device)
            row_ctx_mask = ctx_mask[which]
            positions = row_ctx_mask.sum(-1, keepdim=True) + torch.arange(span, device=device)
            logits = model(input_ids=opt_ids, attention_mask=torch.cat([row_ctx_mask, opt_mask], dim=1),
                           position_ids=positions, past_key_values=cache, use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            # logits at option position t predict option token t+1
            targets = opt_ids[:, 1:].clamp(min=0)
            later = logp[:, :-1].gather(-1, targets[..., None]).squeeze(-1) * opt_mask[:, 1:]
            totals = (first[which].gather(-1, opt_ids[:, :1]).squeeze(-1) + later.sum(-1)).tolist()
            totals = iter(totals)  # rows are in question order
            for i, qo in zip(batch, opts):
                scores[i] = [next(totals) for _ in qo]
            bar.update(len(rows))
    return scores


def loglik_rows(model, tokenizer, records: list[dict], batch_size: int, model_label: str, kind_of) -> list[dict]:
    """Prediction rows in the same schema as generated ones (variant "loglik")."""
    return rows_from_logprobs(records, option_logprobs(model, tokenizer, records, batch_size), model_label, kind_of)


def rows_from_logprobs(records: list[dict], option_logps: list[list[float]], model_label: str, kind_of) -> list[dict]:
    """Prediction rows (variant "loglik") from each record's option log-probabilities: the highest one is the answer."""
    rows = []
    for record, logps in zip(records, option_logps, strict=True):
        pred = LETTERS[max(range(len(logps)), key=logps.__getitem__)]
        per_char = [lp / max(len(o) + 1, 1) for lp, o in zip(logps, record["options"])]
        pred_norm = LETTERS[max(range(len(per_char)), key=per_char.__getitem__)]
        rows.append({"id": record["id"], "variant": VARIANT, "model": model_label, "source": record["source"],
                     "kind": kind_of(record["question"]), "answer": record["answer"],
                     "n_options": len(record["options"]), "pred": pred,
                     "correct": pred == record["answer"], "correct_norm": pred_norm == record["answer"],
                     "format_ok": True, "n_tokens": 0, "reasoning_words": 0, "finished": True,
                     "completion": "", "option_logprobs": [round(x, 4) for x in logps]})
    return rows
