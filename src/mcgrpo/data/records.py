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


def _blank(option) -> bool:
    return option is None or (isinstance(option, str) and not option.strip())


def make_record(*, id, question, options, answer, context="", source="", answer_format="letter", where="") -> dict:
    """Validate one item and return it in the normalised schema.

    `where` (file and line) is kept as "_where" for load_splits' duplicate-id check, which drops it.
    """
    if isinstance(question, (list, tuple, dict)):
        raise UserError(f"{where}: question is a {type(question).__name__}, not text; map prepare.fields.question "
                        "to a text column (a dotted path like `question.stem` reaches into nested fields)")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: question is missing or empty")
    if not isinstance(options, (list, tuple)):
        raise UserError(f"{where}: options must be a list, got {type(options).__name__}")
    options = list(options)
    while options and _blank(options[-1]):  # trailing blanks: per-letter columns A-E where E is unused
        options.pop()
    if any(_blank(o) for o in options):
        # dropping it would move every later option up a letter, and the answer would point at another option
        gap = next(i for i, o in enumerate(options) if _blank(o))
        raise UserError(f"{where}: option {LETTERS[gap] if gap < len(LETTERS) else gap + 1} is blank but a later one "
                        "is not; fill it in or remove the question (blank options may only come last)")
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise UserError(f"{where}: {len(options)} option(s); need {MIN_OPTIONS} to {MAX_OPTIONS} (letters A-J)")
    if not all(isinstance(o, (str, int, float)) for o in options):
        raise UserError(f"{where}: every option must be text")
    if context is not None and not isinstance(context, str):
        raise UserError(f"{where}: context must be text, got {type(context).__name__}")
    options = [str(o).strip() for o in options]
    if answer_format == "text":
        text = str(answer).strip() if isinstance(answer, (str, int, float)) else None
        if text not in options:
            raise UserError(f"{where}: answer {answer!r} is not the text of any option (answer_format=text matches "
                            "an option exactly, after stripping spaces)")
        answer, answer_format = options.index(text), "index0"
    return {
        "id": str(id),
        "context": (context or "").strip(),
        "question": question.strip(),
        "options": options,
        "answer": answer_letter(answer, answer_format, len(options), where),
        "source": str(source),
        "_where": where,
    }


def check_unique_ids(records: list[dict], name: str) -> None:
    seen = {}
    for r in records:
        if r["id"] in seen:
            first, here = seen[r["id"]], r.get("_where") or name
            raise UserError(f"{here}: duplicate id {r['id']!r} (first at {first}); ids must be unique (map another "
                            "column to prepare.fields.id, or set it to null to number the rows)")
        seen[r["id"]] = r.get("_where") or name
