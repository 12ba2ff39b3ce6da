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
# completion_option answers with the option's own words, not its letter: a small pretrained model cannot tie a
# letter to an option (its letters are at chance on RACE) but does copy an option, and which one it copies can be
# learnt. completion_open shows no options: the model's own words are read as the one option they name, so
# there is no list position to fall back on. completion_pick has completion_open's prompt, and its answer is
# decoded under a constraint (mcgrpo.constrained) that lets it write one option, whole: it is read as the option it
# restates. The four one-line variants end with their first line.
OPTION_VARIANT = "completion_option"
OPEN_VARIANT = "completion_open"
PICK_VARIANT = "completion_pick"
OPTION_TEXT_VARIANTS = (OPTION_VARIANT, OPEN_VARIANT, PICK_VARIANT)  # judged against the option texts, not a letter
ONE_LINE_VARIANTS = ("completion_direct", OPTION_VARIANT, OPEN_VARIANT, PICK_VARIANT)


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


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def match_option(text: str, options: list[str]) -> str | None:
    """The letter of the option a one-line answer restates, or None.

    Word overlap (F1 over word sets) with the best option must be at least 0.6 and above every other option's:
    a truncated or lightly reworded copy counts, a blend of two options or a new sentence does not.
    """
    said = _words(text)
    if not said:
        return None
    scores = [2 * len(said & words) / (len(said) + len(words)) if words else 0.0 for words in map(_words, options)]
    best = max(range(len(scores)), key=scores.__getitem__)
    if scores[best] < 0.6 or sorted(scores)[-2] == scores[best]:
        return None
    return LETTERS[best]


# Words too common to tie an answer to one option ("the", "of", "was"): completion_open matches on the rest.
# Short on purpose: "not", "no" and "never" carry the answer in options like "is not".
_FUNCTION_WORDS = frozenset("a an the of to in on at by for from with as and or is was are were be been it its "
                            "that this he she they his her their".split())


def content_words(text: str) -> set[str]:
    """The words of a text that can tie it to one option: its lowercased words, function words left out."""
    return _words(text) - _FUNCTION_WORDS


def named_option(text: str, options: list[str]) -> str | None:
    """The letter of the one option a free answer names, or None: completion_open's reading.

    An option is named when the answer holds one of its distinctive content words (a word no other option has).
    An answer naming none, or several, is no answer. The model never saw the options, so a close copy is not asked
    for; but a line that goes on naming every candidate ("It's Kim's. It's Kate's. It's Lily's.") must not be read
    as any of them: a looser reading (word-overlap F1, unique best) taught GRPO to write such lines
    (benchmarks/README.md)."""
    said = content_words(text)
    words = [content_words(o) for o in options]
    named = [i for i, own in enumerate(words)
             if said & own.difference(*(other for j, other in enumerate(words) if j != i))]
    return LETTERS[named[0]] if len(named) == 1 else None


def _same_text(line: str, option: str) -> bool:
    """Whether a line is the option, whole (case, spacing and a leading "- " aside)."""
    return " ".join(re.sub(r"^[-*\s]+", "", line).split()).lower() == " ".join(option.split()).lower()


def _restates_option(text: str, options: list[str]) -> bool:
    """completion_option's and completion_pick's strict form: the line is one option, whole."""
    return any(_same_text(text, o) for o in options)


def picked_option(text: str, options: list[str]) -> str | None:
    """completion_pick's reading: the letter of the one option the line is, whole; a line that is not one (cut at
    the token budget, or written without the constraint, as TRL's own rollouts write it) is read as completion_open
    reads a line (named_option). Two options with the same text make the line no answer."""
    same = [i for i, o in enumerate(options) if _same_text(text, o)]
    if same:
        return LETTERS[same[0]] if len(same) == 1 else None
    return named_option(text, options)


def answer_span(text, variant: str = "cot") -> str:
    """The part of a completion its prompt variant asks for.

    A pretrained model given a completion prompt writes its answer, then goes on with a new question:
    the one-line variants (completion_direct, completion_option, completion_open) keep the first line;
    completion_cot keeps everything up to the end of the first "Answer: ..." line, or up to the next question when
    there is none. Chat variants keep all of it.
    """
    text = completion_text(text)
    if not variant.startswith(COMPLETION_PREFIX):
        return text
    text = text.strip()
    if variant in ONE_LINE_VARIANTS:
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


def follows_format(text: str, variant: str = "cot", options: list[str] | None = None) -> bool:
    """Did the completion answer in the form the prompt variant asked for? (completion_option and completion_open
    need the options.)"""
    text = answer_span(text, variant)
    if variant in (OPTION_VARIANT, PICK_VARIANT):
        return _restates_option(text, _needed(options, variant))
    if variant == OPEN_VARIANT:
        return named_option(text, _needed(options, variant)) is not None
    if variant in ("direct", "completion_direct"):
        return _BARE.match(text) is not None and len(text.strip()) <= 12
    if variant == "completion_cot":
        return _FINAL_LINE_FORMAT.match(text) is not None
    return _STRICT_FORMAT.match(text) is not None


# --- rewards: TRL signature, one float per completion -------------------------------------------


def _needed(options, variant=OPTION_VARIANT):
    if options is None:
        raise ValueError(f"prompt variant {variant!r} is judged against the option texts: pass options")
    return options


def declared_answer(text, variant: str = "cot", n_options: int = 4, options: list[str] | None = None) -> str | None:
    """The letter a completion answers with, read from the part its variant asks for (its answer_span):
    the declared letter, for completion_option the option its line restates, for completion_open the option its
    line names, for completion_pick the option its line is."""
    span = answer_span(text, variant)
    if variant == OPTION_VARIANT:
        return match_option(span, _needed(options))
    if variant == PICK_VARIANT:
        return picked_option(span, _needed(options, variant))
    if variant == OPEN_VARIANT:
        return named_option(span, _needed(options, variant))
    return extract_answer(span, n_options)


def _variants(variant, n: int) -> list[str]:
    """TRL passes dataset columns as lists (one entry per completion); plain calls may pass one name or none."""
    if variant is None or isinstance(variant, str):
        return [variant or "cot"] * n
    return list(variant)


def correctness_reward(completions, answer, n_options=None, variant=None, options=None, **kwargs) -> list[float]:
    """1.0 when the answer read from the completion (`declared_answer`) is the gold letter, else 0.0."""
    n = len(completions)
    n_options, options = n_options or [4] * n, options or [None] * n
    return [float(declared_answer(c, v, k, o) == gold)
            for c, gold, k, v, o in zip(completions, answer, n_options, _variants(variant, n), options)]


def format_reward(completions, variant=None, options=None, **kwargs) -> list[float]:
    """1.0 when the completion has its variant's form (cot: exactly `<reasoning>...</reasoning><answer>X</answer>`;
    direct: the letter alone; completion_cot: reasoning, then a final line `Answer: X`; completion_option and
    completion_pick: one option's text, whole; completion_open: a line that names one option), else 0.0."""
    options = options or [None] * len(completions)
    variants = _variants(variant, len(completions))
    return [float(follows_format(c, v, o)) for c, v, o in zip(completions, variants, options)]


def tag_count_reward(completions, **kwargs) -> list[float]:
    """Partial credit, 0.25 per tag used exactly once: a denser signal while the format is being learnt."""
    tags = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
    return [sum(0.25 for t in tags if completion_text(c).count(t) == 1) for c in completions]


BASE_CHOICE = "base_choice"  # the reward's name, and the training column it reads


def base_choice_reward(completions, variant=None, options=None, n_options=None, base_choice=None,
                       **kwargs) -> list[float]:
    """1.0 when the completion answers with the option its base model's log-likelihood ranks first (the
    `base_choice` column, an option's text, which the train stage adds with `training.with_base_choices`), else
    0.0: no label is read. A pretrained model's option log-likelihood can read the passage while its written
    answer copies an option by position; this ties the written answer to what the scoring reads."""
    if base_choice is None:
        raise ValueError(f"the {BASE_CHOICE!r} reward reads the training column {BASE_CHOICE!r} (the base model's "
                         "log-likelihood choice), which the train stage adds; it cannot score a completion alone")
    n = len(completions)
    n_options, options = n_options or [4] * n, options or [None] * n
    scores = []
    for c, v, k, o, choice in zip(completions, _variants(variant, n), n_options, options, base_choice):
        pred = declared_answer(c, v, k, _needed(o, v))  # the choice is an option's text: the options say which letter
        scores.append(float(pred is not None and o[LETTERS.index(pred)] == choice))
    return scores


REWARDS = {
    "correct": correctness_reward,
    "format": format_reward,
    "tags": tag_count_reward,
    BASE_CHOICE: base_choice_reward,
}
# Rewards that read a column only training has: wherever a single completion is scored (plots, `mcgrpo score`,
# the chat page) they are left out.
TRAINING_ONLY = {BASE_CHOICE}


def mc_reward(completions, answer, n_options=None, *, weights: dict, variant=None, **kwargs) -> list[float]:
    """The weighted sum of the rule rewards: what the pipeline trains on (with train.reward_weights)."""
    total = [0.0] * len(completions)
    for name, weight in weights.items():
        if weight:
            scores = REWARDS[name](completions, answer=answer, n_options=n_options, variant=variant, **kwargs)
            total = [t + weight * s for t, s in zip(total, scores)]
    return total


def judge(completion, answer: str, n_options: int = 4, variant: str = "cot", options: list[str] | None = None) -> dict:
    """The letter one completion answers with (`declared_answer`), whether it is right, whether in format."""
    pred = declared_answer(completion, variant, n_options, options)
    return {"pred": pred, "correct": pred is not None and pred == answer,
            "format_ok": follows_format(completion, variant, options)}


def score_completion(completion, answer: str, n_options: int, variant: str, weights: dict,
                     options: list[str] | None = None) -> dict:
    """`judge` plus the weighted reward: what `mcgrpo score` and the chat page show."""
    reward = mc_reward([completion], [answer], [n_options], weights=weights, variant=variant, options=[options])[0]
    return {**judge(completion, answer, n_options, variant, options), "reward": reward}
