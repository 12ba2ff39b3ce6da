"""Prompt variants: every instruction the model sees is defined here, once.

Two families:
- chat variants (`direct`, `cot`) for instruction-tuned models: one user turn rendered by the tokenizer's
  own chat template (Gemma has no system role, so the instructions open the user turn);
- completion variants (`completion_direct`, `completion_option`, `completion_open`, `completion_pick`,
  `completion_cot`) for pretrained models, which
  have no chat template and under one only repeat the instructions: plain text that ends where the answer starts
  ("Article: ... Question: ... A. ... Answer:"), optionally after k solved examples from the train split
  (prepare.n_shots). completion_option lists the options unlettered ("- ...") and is answered with an option's own
  words: a small pretrained model's letters are at chance, but it copies options (rewards.OPTION_VARIANT).
  completion_open shows no options at all: the model writes its own answer, read as the one option it names
  (rewards.OPEN_VARIANT). With no list to copy from there is no position to prefer. A fill-in question is not asked
  but begun: the article is followed by the question's words before its blank, and the answer continues the
  sentence (asked with its blank, the 270M copies the blank). Other questions keep "Question: ... Answer:", the
  prompt the option log-likelihood scores after. completion_pick has completion_open's prompt, and its answer is
  decoded so that it can only be one option, whole (mcgrpo.constrained): the model picks by its own probabilities
  over the options' texts, blind to any list.
  The reasoning form asks for reasoning, then a fixed final line "Answer: X".

A completion model does not stop by itself: it writes the answer and goes on with a new question.
`rewards.answer_span` cuts a completion to the part its variant asks for, and `stop_token_ids` lets
generation stop there; training rewards and evaluation both judge the cut text, so they agree.
"""

from mcgrpo.errors import UserError
from mcgrpo.rewards import COMPLETION_PREFIX, LETTERS, ONE_LINE_VARIANTS, OPEN_VARIANT, OPTION_VARIANT, PICK_VARIANT

NO_LIST_VARIANTS = (OPEN_VARIANT, PICK_VARIANT)  # the options are not shown

INSTRUCTIONS = {
    "direct": (
        "Read the passage and answer the multiple-choice question. "
        "Reply with the letter of the correct option only."
    ),
    "cot": (
        "Read the passage and answer the multiple-choice question. "
        "First think step by step inside <reasoning> </reasoning>, quoting the passage where it helps. "
        "Then give only the letter of the correct option inside <answer> </answer>."
    ),
    "completion_direct": "",  # the layout alone says what comes next: "Answer:" and a letter
    "completion_option": "",  # "Answer:" and one option's text
    "completion_open": "",  # "Answer:" and the model's own words, no options shown
    "completion_pick": "",  # completion_open's prompt; the answer is decoded as one option, whole
    "completion_cot": (
        "Answer the question about the article. Explain your reasoning in one paragraph, then write "
        "the final line \"Answer: \" followed by the letter of the correct option."
    ),
}
# What a variant without instructions shows instead (the report's prompt list)
LAYOUTS = {
    "completion_direct": "no instructions: options lettered `A.` to `D.`, the layout ends in `Answer:`, a letter "
                         "follows",
    "completion_option": "no instructions: options unlettered (`- ...`), the layout ends in `Answer:` and a new "
                         "line's `-`, one option's own words follow",
    "completion_open": "no instructions and no options: the layout ends in `Answer:`, or for a fill-in question in "
                       "its words before the blank; the model's own words follow, read as the one option they "
                       "name (a word only that option has)",
    "completion_pick": "completion_open's prompt (no options shown); the answer is decoded under a constraint that "
                       "lets it write one option, whole, and is read as that option",
}
VARIANTS = tuple(INSTRUCTIONS)
CHAT_VARIANTS = ("direct", "cot")
COMPLETION_VARIANTS = tuple(v for v in VARIANTS if v.startswith(COMPLETION_PREFIX))
# Where the model's text starts, after the question (a completion prompt ends with it).
# completion_option's cue opens a bullet: after a bare "Answer:" the model starts a new line, which would end the
# answer before it begins (a one-line answer stops at its first newline).
_CUE = {"completion_direct": "Answer:", "completion_option": "Answer:\n-", "completion_open": "Answer:",
        "completion_pick": "Answer:", "completion_cot": "Reasoning:"}


def blank_stem(question: str) -> str:
    """A fill-in question's words before its blank ("The writer thinks that _ ." -> "The writer thinks that"), or ""
    (no blank, or the blank comes first). completion_open's answer continues them, as the sentence would."""
    return question.split("_", 1)[0].strip() if "_" in question else ""


def cue(record: dict, variant: str) -> str:
    """Where the model's text starts: the variant's cue, or for a completion_open fill-in question its stem."""
    return (variant in NO_LIST_VARIANTS and blank_stem(record["question"])) or _CUE[variant]


def is_chat(variant: str) -> bool:
    return variant in CHAT_VARIANTS


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise KeyError(f"unknown prompt variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return variant


def format_question(record: dict) -> str:
    """Passage, question and lettered options as the user sees them (chat variants)."""
    options = "\n".join(f"{LETTERS[i]}) {text}" for i, text in enumerate(record["options"]))
    passage = f"Passage:\n{record['context']}\n\n" if record.get("context") else ""
    return f"{passage}Question: {record['question']}\n\nOptions:\n{options}"


def instructions(record: dict, variant: str) -> str:
    """The variant's instructions; without a passage (ARC, OpenBookQA) they do not mention one."""
    text = INSTRUCTIONS[check_variant(variant)]
    if not record.get("context"):
        text = text.replace("Read the passage and answer", "Answer").replace(" about the article", "")
        text = text.replace(", quoting the passage where it helps", "")
    return text


def build_messages(record: dict, variant: str) -> list[dict]:
    """The conversation for one question: a single user turn (instructions folded in). Chat variants only."""
    if not is_chat(check_variant(variant)):
        raise KeyError(f"prompt variant {variant!r} is a completion prompt, not a conversation")
    return [{"role": "user", "content": f"{instructions(record, variant)}\n\n{format_question(record)}"}]


def completion_question(record: dict, variant: str = "completion_direct") -> str:
    """One question in the completion layout (as lm-evaluation-harness lays out RACE): options lettered, for
    completion_option listed unlettered under "Options:", for completion_open not shown (nor a fill-in question,
    whose stem is the cue)."""
    passage = f"Article: {record['context']}\n\n" if record.get("context") else ""
    if variant in NO_LIST_VARIANTS:
        return passage if blank_stem(record["question"]) else f"{passage}Question: {record['question']}\n"
    if variant == OPTION_VARIANT:
        options = "Options:\n" + "".join(f"- {text}\n" for text in record["options"])
    else:
        options = "".join(f"{LETTERS[i]}. {text}\n" for i, text in enumerate(record["options"]))
    return f"{passage}Question: {record['question']}\n{options}"


def shot_answer(shot: dict, variant: str) -> str:
    """A solved example's answer: "Answer: B", or for completion_option (as a bullet) and completion_open the correct
    option's text."""
    if variant in (OPTION_VARIANT, *NO_LIST_VARIANTS):
        return f"{cue(shot, variant)} {shot['options'][LETTERS.index(shot['answer'])]}"
    return f"Answer: {shot['answer']}"


def completion_text(record: dict, variant: str, shots: list[dict] = ()) -> str:
    """A completion prompt without <bos>: instructions, solved shots, then the question and its cue."""
    head = instructions(record, variant)
    # Shots show the answer line only: RACE has no written reasoning to show.
    solved = "".join(f"{completion_question(s, variant)}{shot_answer(s, variant)}\n\n" for s in shots)
    return (f"{head}\n\n" if head else "") + solved + completion_question(record, variant) + cue(record, variant)


def render_prompt(tokenizer, record: dict, variant: str, shots: list[dict] = ()) -> str:
    """The exact prompt text the model is given, starting with <bos> (token it with add_special_tokens=False).

    Chat variants go through the tokenizer's own chat template; completion variants take `shots`.
    """
    if is_chat(check_variant(variant)):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"prompt variant {variant!r} needs a chat template, and this tokenizer "
                            f"({getattr(tokenizer, 'name_or_path', '?')}) has none: use a completion variant "
                            f"({', '.join(COMPLETION_VARIANTS)}) for a pretrained model, or an instruction-tuned "
                            "(-it) model")
        return tokenizer.apply_chat_template(build_messages(record, variant), tokenize=False,
                                             add_generation_prompt=True)
    return (tokenizer.bos_token or "") + completion_text(record, variant, shots)


def trainer_prompt(record: dict, variant: str, shots: list[dict] = ()):
    """The prompt as TRL's GRPOTrainer takes it: a conversation (chat) or text it tokenizes with <bos> added."""
    return build_messages(record, variant) if is_chat(variant) else completion_text(record, variant, shots)


# --- where a completion ends (rewards.answer_span cuts the text the same way) --------------------------


def stop_token_ids(tokenizer, variant: str) -> list[int]:
    """Tokens, besides end-of-sequence, after which a completion of this variant is over.

    completion_direct and completion_option end with their line (any token holding a newline); completion_cot
    with its paragraph and final line (any token holding a blank line). Chat variants end at <end_of_turn>,
    already a stop.
    """
    if is_chat(variant):
        return []
    mark = "\n" if variant in ONE_LINE_VARIANTS else "\n\n"
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    # byte-level BPE spells a newline "Ċ"; SentencePiece spells it as itself
    return sorted(i for i, piece in enumerate(pieces)
                  if piece and (mark in piece or mark.replace("\n", "Ċ") in piece) and i not in
                  tokenizer.all_special_ids)
