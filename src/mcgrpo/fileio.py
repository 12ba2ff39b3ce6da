"""Atomic file writes and line-numbered JSONL reading.

Every output goes to a temporary sibling first and is renamed into place, so an interrupted
stage never leaves a half-written file that DVC or the next stage would trust.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mcgrpo.errors import UserError


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to `path`; on success it replaces `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / f"out{suffix}"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def iter_jsonl(path_or_lines, name=None):
    """Yield (line_number, object) from a JSONL file or an iterable of lines; blank lines are skipped."""
    if isinstance(path_or_lines, (str, Path)):
        name = name or str(path_or_lines)
        if not Path(path_or_lines).exists():
            raise UserError(f"{name}: file not found")
        with open(path_or_lines, "rb") as f:
            yield from iter_jsonl(f, name)
        return
    for number, raw in enumerate(path_or_lines, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise UserError(f"{name}:{number}: not UTF-8 text; re-encode the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{name}:{number}: malformed JSON ({err.msg}); fix or remove this line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{name}:{number}: expected a JSON object per line, got {type(obj).__name__}")
        yield number, obj


def read_jsonl(path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in blocks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_problem(path) -> str | None:
    """Why a .safetensors file cannot be read (truncated, damaged), or None: touches each tensor's bounds
    against the file size, as loading it would."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own error types
        return f"unreadable ({err})"
    return None
