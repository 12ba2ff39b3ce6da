"""Generation-free accuracy: score each option by its log-likelihood as the answer.

This is how lm-evaluation-harness scores RACE ("Article: ...\\n\\nQuestion: ...\\nAnswer:" followed by
" <option text>", no chat template), so the numbers sit next to published tables. `correct` uses the
summed log-probability (lm-eval's acc), `correct_norm` the log-probability per character (acc_norm).
It is fast (one forward pass per option, no decoding) and needs no answer format at all.
"""

import torch
from tqdm.auto import tqdm

from mcgrpo.rewards import LETTERS

VARIANT = "loglik"


def loglik_context(record: dict) -> str:
    passage = f"Article: {record['context']}\n\n" if record.get("context") else ""
    return f"{passage}Question: {record['question']}\nAnswer:"


def option_logprobs(model, tokenizer, records: list[dict], batch_size: int = 16) -> list[list[float]]:
    """Summed log-probability of " <option>" after the context, for every option of every record."""
    pairs = []  # (record index, context ids, option ids)
    for i, record in enumerate(records):
        context = tokenizer(loglik_context(record))["input_ids"]  # with <bos>, as the model was trained
        for option in record["options"]:
            pairs.append((i, context, tokenizer(" " + option, add_special_tokens=False)["input_ids"]))
    scores = [[] for _ in records]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    with torch.inference_mode(), tqdm(total=len(pairs), desc="log-likelihood", unit="option") as bar:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            seqs = [ctx + opt for _, ctx, opt in batch]
            width = max(map(len, seqs))
            # Left padding puts every option at the right edge, so only the last few positions need logits.
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
            keep = max(len(opt) for _, _, opt in batch) + 1
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, (i, _, opt) in enumerate(batch):
                # logits at position t predict token t+1: the option's tokens are predicted by the
                # len(opt) positions just before the last one.
                targets = torch.tensor(opt, device=device)
                predicted = logp[row, keep - 1 - len(opt):keep - 1]
                scores[i].append(float(predicted.gather(-1, targets[:, None]).sum()))
            bar.update(len(batch))
    return scores


def loglik_rows(model, tokenizer, records: list[dict], batch_size: int, model_label: str, kind_of) -> list[dict]:
    """Prediction rows in the same schema as generated ones (variant "loglik")."""
    rows = []
    for record, logps in zip(records, option_logprobs(model, tokenizer, records, batch_size)):
        pred = LETTERS[max(range(len(logps)), key=logps.__getitem__)]
        per_char = [lp / max(len(o) + 1, 1) for lp, o in zip(logps, record["options"])]
        pred_norm = LETTERS[max(range(len(per_char)), key=per_char.__getitem__)]
        rows.append({"id": record["id"], "variant": VARIANT, "model": model_label, "source": record["source"],
                     "kind": kind_of(record["question"]), "answer": record["answer"], "pred": pred,
                     "correct": pred == record["answer"], "correct_norm": pred_norm == record["answer"],
                     "format_ok": True, "reward": None, "n_tokens": 0, "reasoning_words": 0, "finished": True,
                     "completion": "", "option_logprobs": [round(x, 4) for x in logps]})
    return rows
