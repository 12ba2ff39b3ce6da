"""Answer extraction and the reward registry: small pure functions, no model code.

Every reward has TRL's signature, `reward(completions, answer, n_options, **kwargs) -> list[float]`,
and accepts plain-text completions or conversational ones ([{"role": "assistant", "content": ...}]).
`judge` is what the metrics record about a completion, so training and evaluation read an answer the same way;
`mc_reward` / `score_completion` add the weighted sum, with the weights always passed in: they come from
`train.reward_weights` in params.yaml (`TrainParams.rule_reward_weights`), the same numbers training uses.
"""

import re

LETTERS = "ABCDEFGHIJ"

# A declaration is where the model says "this is my answer". Each pattern captures the text that
# follows (or is wrapped by) the declaration; the letter is read from the start of that text only,
# so reasoning that mentions options ("Option A says ...") never counts as an answer.
_DECLARATIONS = [
    re.compile(r"<answer>(?P<body>.*?)</answer>", re.I | re.S),
    re.compile(r"\\boxed\{(?:\\text(?:bf)?\{)?(?P<body>[^{}]*)\}"),
    re.compile(
        r"\b(?:final\s+|correct\s+|right\s+|best\s+)?(?:answer|choice|option)"
        r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be))?\s*"
        r"(?:\*\*|__)?\s*(?::|=|is\b)\s*(?=(?P<body>[^\n]*))",
        re.I,
    ),
    re.compile(r"\b(?:answer|choice|option)\s+(?:is|would\s+be|should\s+be|must\s+be)\s+(?=(?P<body>[^\n]*))",
               re.I),
]
# (Line-long bodies are captured in a lookahead, so the scan goes on to find later declarations on the
# same line: "Answer: A ... Answer: C" must read C.)
# A letter at the start of a declaration body, after optional markup: "**C**", "(c)", "[B]", "C) text", "C."
_LEAD = re.compile(r"^[\s*_`'\"]*(?:option\s+|choice\s+|letter\s+)?(?P<open>[(\[{]?)\s*(?P<letter>[A-Ja-j])\b(?P<after>.*)", re.I | re.S)
# "A or B", "A, C", "A and B", "A/B" right after the first letter: an ambiguous declaration.
_SECOND = re.compile(r"^[)\]}*_`'\".]*\s*(?:,|/|&|\bor\b|\band\b)\s*[(\[]?\s*(?P<letter>[A-J])\b")
# A completion that is nothing but an answer: "C", "(C)", "C.", "C) The boy ...", "**C**".
_BARE = re.compile(r"^[\s*_`]*(?P<open>[(\[]?)(?P<letter>[A-J])(?:[)\].:]|\*\*|\s*$)", re.S)
_STRICT_FORMAT = re.compile(r"^\s*<reasoning>(?P<reasoning>.+?)</reasoning>\s*<answer>\s*[A-J]\s*</answer>\s*$", re.S)
# completion_cot: reasoning, then the final line "Answer: X"
_FINAL_LINE_FORMAT = re.compile(r"^\s*(?P<reasoning>\S.*?)\n[ \t]*Answer\s*:\s*\(?[A-J]\)?\.?\s*$", re.S)
_FINAL_LINE = re.compile(r"^[ \t]*(?:final\s+)?answer\s*:[^\n]*", re.I | re.M)
_NEW_EXAMPLE = re.compile(r"\n\s*(?:Article|Question|Passage)\s*:")
COMPLETION_PREFIX = "completion_"  # prompt variants for pretrained models (prompts.COMPLETION_VARIANTS)


def completion_text(completion) -> str:
    """Plain text of a completion, whether a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion.get("content") or ""
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


AMBIGUOUS = "?"


def _letter_from_body(body: str) -> str | None:
    """The letter a declaration body names; None if it names none, AMBIGUOUS if it names two."""
    m = _LEAD.match(body)
    if not m:
        return None
    letter, after = m["letter"], m["after"]
    second = _SECOND.match(after)
    if second and second["letter"] != letter.upper():
        return AMBIGUOUS
    if letter.islower():
        # Lowercase letters count only when marked as a letter: "(c)", "c)", "c." or "c" alone.
        if not (m["open"] or re.match(r"^\s*(?:[)\].:]|\*\*|$)", after)):
            return None
    elif letter in "AI" and not m["open"] and re.match(r"^ +[a-z]", after):
        return None  # the article "A" or pronoun "I" starting a sentence, not an option
    return letter.upper()


def extract_answer(text, n_options: int = 4) -> str | None:
    """The answer letter a completion declares, or None.

    The last readable declaration wins (models often revise). If that declaration names two
    different letters, or a letter outside the options, the result is None rather than a guess.
    A completion with no declaration counts only if it *starts* with a letter ("C", "(C)",
    "C) text"): stray capitals elsewhere are never read as answers.
    """
    text = completion_text(text)
    declared = []  # (position, letter or AMBIGUOUS)
    for pattern in _DECLARATIONS:
        for m in pattern.finditer(text):
            letter = _letter_from_body(m["body"])
            if letter is not None:
                declared.append((m.start(), letter))
    if declared:
        # Declarations can nest ("<answer>Answer: C</answer>"): the innermost, last one decides.
        last = max(pos for pos, _ in declared)
        letters = {letter for pos, letter in declared if pos == last}
        letter = letters.pop() if len(letters) == 1 else AMBIGUOUS
    else:
        m = _BARE.match(text)
        letter = m["letter"] if m else None
    if letter is None or letter == AMBIGUOUS or LETTERS.index(letter) >= n_options:
        return None
    return letter


def answer_span(text, variant: str = "cot") -> str:
    """The part of a completion its prompt variant asks for.

    A pretrained model given a completion prompt writes its answer, then goes on with a new question:
    completion_direct keeps the first line; completion_cot keeps everything up to the end of the first
    "Answer: ..." line, or up to the next question when there is none. Chat variants keep all of it.
    """
    text = completion_text(text)
    if not variant.startswith(COMPLETION_PREFIX):
        return text
    text = text.strip()
    if variant == "completion_direct":
        return text.split("\n", 1)[0].strip()
    match = _FINAL_LINE.search(text)
    if match:
        return text[:match.end()].strip()
    return _NEW_EXAMPLE.split(text, 1)[0].strip()


def reasoning_text(text: str) -> str:
    """The reasoning part of a completion: inside <reasoning> tags if present, else all but the answer tag."""
    text = completion_text(text)
    m = re.search(r"<reasoning>(.*?)(?:</reasoning>|$)", text, re.S)
    if m:
        return m.group(1).strip()
    return re.sub(r"<answer>.*?</answer>", "", text, flags=re.S).strip()


def follows_format(text: str, variant: str = "cot") -> bool:
    """Did the completion answer in the form the prompt variant asked for?"""
    text = answer_span(text, variant)
    if variant in ("direct", "completion_direct"):
        return _BARE.match(text) is not None and len(text.strip()) <= 12
    if variant == "completion_cot":
        return _FINAL_LINE_FORMAT.match(text) is not None
    return _STRICT_FORMAT.match(text) is not None


# --- rewards: TRL signature, one float per completion -------------------------------------------


def _variants(variant, n: int) -> list[str]:
    """TRL passes dataset columns as lists (one entry per completion); plain calls may pass one name or none."""
    if variant is None or isinstance(variant, str):
        return [variant or "cot"] * n
    return list(variant)


def correctness_reward(completions, answer, n_options=None, variant=None, **kwargs) -> list[float]:
    """1.0 when the declared letter (in the part the prompt variant asks for) equals the gold letter, else 0.0."""
    n_options = n_options or [4] * len(completions)
    return [float(extract_answer(answer_span(c, v), n) == gold)
            for c, gold, n, v in zip(completions, answer, n_options, _variants(variant, len(completions)))]


def format_reward(completions, variant=None, **kwargs) -> list[float]:
    """1.0 when the completion has its variant's form (cot: exactly `<reasoning>...</reasoning><answer>X</answer>`;
    direct: the letter alone; completion_cot: reasoning, then a final line `Answer: X`), else 0.0."""
    return [float(follows_format(c, v)) for c, v in zip(completions, _variants(variant, len(completions)))]


def tag_count_reward(completions, **kwargs) -> list[float]:
    """Partial credit, 0.25 per tag used exactly once: a denser signal while the format is being learnt."""
    tags = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
    return [sum(0.25 for t in tags if completion_text(c).count(t) == 1) for c in completions]


REWARDS = {
    "correct": correctness_reward,
    "format": format_reward,
    "tags": tag_count_reward,
}


def mc_reward(completions, answer, n_options=None, *, weights: dict, variant=None, **kwargs) -> list[float]:
    """The weighted sum of the rule rewards: what the pipeline trains on (with train.reward_weights)."""
    total = [0.0] * len(completions)
    for name, weight in weights.items():
        if weight:
            scores = REWARDS[name](completions, answer=answer, n_options=n_options, variant=variant, **kwargs)
            total = [t + weight * s for t, s in zip(total, scores)]
    return total


def judge(completion, answer: str, n_options: int = 4, variant: str = "cot") -> dict:
    """The letter one completion declares (in its variant's answer_span), whether it is right, whether in format."""
    pred = extract_answer(answer_span(completion, variant), n_options)
    return {"pred": pred, "correct": pred is not None and pred == answer, "format_ok": follows_format(completion, variant)}


def score_completion(completion, answer: str, n_options: int, variant: str, weights: dict) -> dict:
    """`judge` plus the weighted reward: what `mcgrpo score` and the chat page show."""
    reward = mc_reward([completion], [answer], [n_options], weights=weights, variant=variant)[0]
    return {**judge(completion, answer, n_options, variant), "reward": reward}
