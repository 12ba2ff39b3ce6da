"""The one record schema every loader produces, and its validation."""

from mcgrpo.errors import UserError
from mcgrpo.rewards import LETTERS

MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)


def answer_letter(value, fmt: str, n_options: int, where: str) -> str:
    """Normalise an answer given as a letter or a 0-/1-based index to a letter in range."""
    if fmt == "letter":
        letter = str(value).strip().upper() if isinstance(value, str) else None
        if not letter or len(letter) != 1 or letter not in LETTERS:
            raise UserError(f"{where}: answer {value!r} is not a letter A-J; set prepare.fields.answer_format "
                            "to index0 or index1 if answers are numbers")
        index = LETTERS.index(letter)
    else:
        try:
            index = int(value) - (fmt == "index1")
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{where}: answer {value!r} is not an integer index ({fmt})") from None
    if not 0 <= index < n_options:
        raise UserError(f"{where}: answer {value!r} is out of range for {n_options} options "
                        f"(answer_format={fmt}); check prepare.fields.answer_format")
    return LETTERS[index]


def make_record(*, id, question, options, answer, context="", source="", answer_format="letter", where="") -> dict:
    """Validate one item and return it in the normalised schema."""
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: question is missing or empty")
    if not isinstance(options, (list, tuple)):
        raise UserError(f"{where}: options must be a list, got {type(options).__name__}")
    options = [o for o in options if o is not None and not (isinstance(o, str) and not o.strip())]
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise UserError(f"{where}: {len(options)} option(s); need {MIN_OPTIONS} to {MAX_OPTIONS} (letters A-J)")
    if not all(isinstance(o, (str, int, float)) for o in options):
        raise UserError(f"{where}: every option must be text")
    if context is not None and not isinstance(context, str):
        raise UserError(f"{where}: context must be text, got {type(context).__name__}")
    return {
        "id": str(id),
        "context": (context or "").strip(),
        "question": question.strip(),
        "options": [str(o).strip() for o in options],
        "answer": answer_letter(answer, answer_format, len(options), where),
        "source": str(source),
    }


def check_unique_ids(records: list[dict], name: str) -> None:
    seen = set()
    for r in records:
        if r["id"] in seen:
            raise UserError(f"{name}: duplicate id {r['id']!r}; ids must be unique (map another column to "
                            "prepare.fields.id, or set it to null to number the rows)")
        seen.add(r["id"])
