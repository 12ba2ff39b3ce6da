"""Prompt variants: every instruction the model sees is defined here, once.

Gemma has no system role, so instructions go at the top of the single user turn; the chat
template itself comes from the tokenizer (`apply_chat_template`), never from a string here.
"""

from mcgrpo.rewards import LETTERS

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
}
VARIANTS = tuple(INSTRUCTIONS)


def format_question(record: dict) -> str:
    """Passage, question and lettered options as the user sees them."""
    options = "\n".join(f"{LETTERS[i]}) {text}" for i, text in enumerate(record["options"]))
    passage = f"Passage:\n{record['context']}\n\n" if record.get("context") else ""
    return f"{passage}Question: {record['question']}\n\nOptions:\n{options}"


def build_messages(record: dict, variant: str) -> list[dict]:
    """The conversation for one question: a single user turn (instructions folded in)."""
    if variant not in INSTRUCTIONS:
        raise KeyError(f"unknown prompt variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return [{"role": "user", "content": f"{INSTRUCTIONS[variant]}\n\n{format_question(record)}"}]


def render_prompt(tokenizer, record: dict, variant: str) -> str:
    """The exact prompt text the model is given, through the tokenizer's own chat template."""
    return tokenizer.apply_chat_template(build_messages(record, variant), tokenize=False, add_generation_prompt=True)
