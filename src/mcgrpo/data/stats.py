"""Descriptive statistics of the prepared splits (data/prepared/stats.json)."""

import re
from collections import Counter

import numpy as np

from mcgrpo.rewards import LETTERS

_WH = re.compile(r"^\s*(what|which|who|whom|whose|when|where|why|how)\b", re.I)


def question_kind(question: str) -> str:
    """fill-in ("The writer thinks _ ."), wh (what/why/how ...), or other (statements, yes/no)."""
    if "_" in question:
        return "fill-in"
    if _WH.match(question) or re.search(r"\b(what|which|who|why|how)\b[^.]*\?\s*$", question, re.I):
        return "wh"
    return "other"


def _percentiles(values) -> dict:
    if not values:
        return {"p50": 0, "p90": 0, "max": 0}
    arr = np.asarray(values)
    return {"p50": int(np.percentile(arr, 50)), "p90": int(np.percentile(arr, 90)), "max": int(arr.max())}


def dataset_stats(splits: dict, lengths: dict, dropped: dict, max_prompt_tokens: int) -> dict:
    """Per split: counts by source, token lengths, answer-letter balance, question kinds, drops.

    lengths[split] = {"context": [...], "prompt": [...]}, token counts aligned with splits[split].
    """
    out = {}
    for role, records in splits.items():
        n = len(records)
        letters = Counter(r["answer"] for r in records)
        out[role] = {
            "n": n,
            "dropped_too_long": dropped.get(role, 0),
            "by_source": dict(sorted(Counter(r["source"] for r in records).items())),
            "n_options": dict(sorted(Counter(str(len(r["options"])) for r in records).items())),
            "context_tokens": _percentiles(lengths[role]["context"]),
            "prompt_tokens": _percentiles(lengths[role]["prompt"]),
            "answer_letters": {k: round(letters[k] / n, 4) for k in LETTERS if letters[k]},
            "question_kinds": dict(sorted(Counter(question_kind(r["question"]) for r in records).items())),
        }
    out["max_prompt_tokens"] = max_prompt_tokens
    return out
