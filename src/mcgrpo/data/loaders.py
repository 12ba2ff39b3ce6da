"""Loaders for each source kind, all yielding normalised records (see records.py).

- hf:      a Hugging Face dataset id (RACE by default), mapped through prepare.fields
- race:    the official RACE tarball or its extracted folder: RACE/{train,dev,test}/{high,middle}/*.txt
- quality: QuALITY's official JSONL (one article per line, nested questions, 1-based gold_label)
- table:   any local JSONL / JSON / CSV / TSV / Parquet, mapped through prepare.fields
"""

import csv
import json
import random
import re
import tarfile
from pathlib import Path

from mcgrpo.data.records import check_unique_ids, make_record
from mcgrpo.errors import UserError
from mcgrpo.fileio import iter_jsonl

POOL = "pool"  # a single file that prepare splits into train and eval itself


def _split_paths(path: str, p) -> dict[str, Path]:
    """{"train": file, "eval": file} when the path has "{split}", else {POOL: file}."""
    if "{split}" in path:
        paths = {"train": Path(path.format(split=p.train_split)), "eval": Path(path.format(split=p.eval_split))}
    else:
        paths = {POOL: Path(path)}
    for role, file in paths.items():
        if not file.exists():
            raise UserError(f"{file}: not found (prepare.path = {path!r}, {role} split); check the path")
    return paths


# --- tables ---------------------------------------------------------------------------------------


def _table_rows(file: Path):
    """Yield (where, row dict) from a JSONL/JSON/CSV/TSV/Parquet file, `where` naming file and line."""
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for number, row in iter_jsonl(file):
            yield f"{file}:{number}", row
    elif suffix == ".json":
        try:
            rows = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{file}: not valid UTF-8 JSON ({err})") from None
        if not isinstance(rows, list):
            raise UserError(f"{file}: expected a JSON array of objects (or use .jsonl)")
        for i, row in enumerate(rows):
            yield f"{file} item {i}", row
    elif suffix in (".csv", ".tsv"):
        try:
            with open(file, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                for row in reader:
                    yield f"{file}:{reader.line_num}", row
        except UnicodeDecodeError:
            raise UserError(f"{file}: not UTF-8 text; re-encode the file as UTF-8") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(file).to_pylist()):
            yield f"{file} row {i}", row
    else:
        raise UserError(f"{file}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")


def _maybe_json_list(value):
    """CSV cells hold lists as JSON text ('["x", "y"]')."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _field(row, column: str):
    """row[column]; a dotted path ("choices.text") reaches into nested objects (CommonsenseQA's export).
    Raises KeyError naming the part that is missing."""
    if column in row:
        return row[column]
    value = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def _from_row(row, fields, where: str, default_id: str, default_source: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with named fields")

    def get(column):
        try:
            return _maybe_json_list(_field(row, column)) if column == fields.options else _field(row, column)
        except KeyError:
            raise UserError(f"{where}: missing field {column!r}; present: {sorted(row)} "
                            "(map your columns with prepare.fields)") from None

    if isinstance(fields.options, list):
        # per-letter columns: each must exist (a mistyped one would silently drop that option from every row);
        # an empty cell is fine at the end (fewer options in this row)
        missing = [c for c in fields.options if c not in row]
        if missing:
            raise UserError(f"{where}: option column(s) {missing} not in the file (present: {sorted(row)}); "
                            "fix prepare.fields.options")
        options = [row[c] for c in fields.options]
    else:
        options = get(fields.options)
    return make_record(
        id=get(fields.id) if fields.id else default_id,
        context=get(fields.context) if fields.context else "",
        question=get(fields.question),
        options=options,
        answer=get(fields.answer),
        source=get(fields.source) if fields.source else default_source,
        answer_format=fields.answer_format,
        where=where,
    )


def load_table(p) -> dict[str, list[dict]]:
    splits = {}
    for role, file in _split_paths(p.path, p).items():
        splits[role] = [
            _from_row(row, p.fields, where, default_id=f"{file.stem}-{i}", default_source=file.stem)
            for i, (where, row) in enumerate(_table_rows(file))
        ]
    return splits


# --- Hugging Face hub -----------------------------------------------------------------------------


def load_hf(p) -> dict[str, list[dict]]:
    import datasets

    splits = {}
    for role, split in (("train", p.train_split), ("eval", p.eval_split)):
        try:
            ds = datasets.load_dataset(p.path, p.config, split=split)
        except Exception as err:  # the hub, the cache and the dataset script all raise their own types
            raise UserError(f"prepare.path={p.path!r} config={p.config!r} split={split!r}: could not load "
                            f"the dataset ({type(err).__name__}: {err}). Check the id, config and split names, "
                            "or point prepare at a local copy (source: race | quality | table)") from None
        records = []
        for i, row in enumerate(ds):
            record = _from_row(row, p.fields, f"{p.path}[{split}] row {i}", f"{split}-{i}", p.config or p.path)
            # RACE on the hub mixes levels in config "all"; its ids ("high123.txt") say which.
            level = re.match(r"(high|middle)", record["id"])
            if "race" in p.path.lower() and level and not p.fields.source:
                record["source"] = f"race-{level.group(1)}"
            records.append(record)
        splits[role] = records
    return splits


# --- RACE, official layout ------------------------------------------------------------------------

_RACE_FILE = re.compile(r"(?:^|/)RACE/(?P<split>train|dev|test)/(?P<level>high|middle)/(?P<name>[^/]+)\.txt$")
_RACE_SPLIT_ALIASES = {"validation": "dev", "val": "dev"}


def _race_files(path: Path):
    """Yield (relative path, bytes) for every passage file, from a tarball or a folder."""
    if path.is_dir():
        root = path if (path / "RACE").is_dir() else path.parent
        for file in sorted(root.glob("RACE/*/*/*.txt")):
            yield file.relative_to(root).as_posix(), file.read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile() and _RACE_FILE.search(member.name):
                        yield member.name, tar.extractfile(member).read()
        except tarfile.TarError as err:
            raise UserError(f"{path}: not a readable tar archive ({err}); give RACE.tar.gz or its extracted folder")


def load_race(p) -> dict[str, list[dict]]:
    path = Path(p.path)
    if not path.exists():
        raise UserError(f"{path}: not found (prepare.path); download RACE.tar.gz from the CMU RACE page")
    levels = {"all": ("high", "middle"), None: ("high", "middle")}.get(p.config, (p.config,))
    if not set(levels) <= {"high", "middle"}:
        raise UserError(f"prepare.config={p.config!r}: RACE levels are all, middle or high")
    wanted = {role: _RACE_SPLIT_ALIASES.get(s, s) for role, s in (("train", p.train_split), ("eval", p.eval_split))}
    splits = {role: [] for role in wanted}
    for name, raw in sorted(_race_files(path)):
        m = _RACE_FILE.search(name)
        if not m or m["level"] not in levels:
            continue
        for role, split in wanted.items():
            if m["split"] != split:
                continue
            try:
                passage = json.loads(raw.decode("utf-8"))
                questions, options, answers = passage["questions"], passage["options"], passage["answers"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{path}: {name}: not a RACE passage file ({type(err).__name__}: {err})") from None
            for i, (question, opts, answer) in enumerate(zip(questions, options, answers)):
                splits[role].append(make_record(
                    id=f"{m['level']}{m['name']}-{i}", context=passage.get("article", ""), question=question,
                    options=opts, answer=answer, source=f"race-{m['level']}", where=f"{path}: {name} question {i}"))
    for role, split in wanted.items():
        if not splits[role]:
            raise UserError(f"{path}: no RACE questions for split {split!r} ({role}) at level(s) {levels}; "
                            "splits are train, dev, test")
    return splits


# --- QuALITY, official JSONL ----------------------------------------------------------------------


def load_quality(p) -> dict[str, list[dict]]:
    splits = {}
    for role, file in _split_paths(p.path, p).items():
        records = []
        for number, article in iter_jsonl(file):
            where = f"{file}:{number}"
            if not isinstance(article.get("questions"), list):
                raise UserError(f"{where}: no 'questions' list; is this QuALITY's official JSONL?")
            for i, q in enumerate(article["questions"]):
                if "gold_label" not in q:
                    raise UserError(f"{where}: question {i} has no gold_label (QuALITY's test split is "
                                    "unlabelled; use the dev file for evaluation)")
                records.append(make_record(
                    id=q.get("question_unique_id") or f"{article.get('set_unique_id', number)}-{i}",
                    context=article.get("article", ""), question=q.get("question"), options=q.get("options"),
                    answer=q["gold_label"], answer_format="index1", source="quality", where=f"{where} question {i}"))
        splits[role] = records
    return splits


LOADERS = {"hf": load_hf, "race": load_race, "quality": load_quality, "table": load_table}


def load_splits(p) -> dict[str, list[dict]]:
    """Records per role: {"train", "eval"} or {POOL} for a single file. Ids are checked unique."""
    splits = LOADERS[p.source](p)
    for role, records in splits.items():
        if not records:
            raise UserError(f"{p.path} ({role}): no questions found; is the file empty, or the split name wrong?")
        check_unique_ids(records, f"{p.path} ({role})")
        for record in records:
            record.pop("_where", None)
    return splits


def pick_shots(splits, n: int, seed: int, candidates: int = 64) -> tuple[list[dict], dict]:
    """n solved examples for completion prompts, drawn by seed from the train split (or the single pool), and
    the splits without them (a shot is never also a training or eval question).

    The shortest passages of `candidates` drawn questions are taken: every prompt carries the shots, so their
    length is paid on each question.
    """
    if not n:
        return [], splits
    role = "train" if "train" in splits else POOL
    drawn = random.Random(seed + 1).sample(splits[role], min(candidates, len(splits[role])))
    shots = sorted(drawn, key=lambda r: (len(r["context"]), r["id"]))[:n]
    taken = {r["id"] for r in shots}
    return shots, {**splits, role: [r for r in splits[role] if r["id"] not in taken]}


def _passage_groups(records: list[dict], rng: random.Random) -> list[list[dict]]:
    """Questions grouped by passage (those without one stand alone), groups in seeded random order."""
    groups = {}
    for r in records:
        groups.setdefault(r.get("context") or ("", r["id"]), []).append(r)
    return rng.sample(list(groups.values()), len(groups))


def sample_splits(splits, n_train, n_eval, seed, keep=lambda record: True):
    """Deterministic sample: shuffle by seed, keep the first n items that pass `keep`.

    Returns ({"train": [...], "eval": [...]}, {"train": dropped, "eval": dropped}). From a single
    pool the split is by passage: eval questions are taken first and a passage's questions all go to
    one side, so train and eval share neither a question nor a passage. From two splits each is
    shuffled by its own seeded generator, so the training sample does not change with the eval split
    (settings chosen with RACE dev train exactly the same model as the run reported on test).
    """
    if POOL in splits:
        groups = _passage_groups(splits[POOL], random.Random(seed))
        shuffled = {"eval": groups, "train": groups}
    else:
        shuffled = {role: [[r] for r in random.Random(f"{seed}:{role}").sample(records, len(records))]
                    for role, records in splits.items()}
    out, dropped, used = {"eval": [], "train": []}, {"eval": 0, "train": 0}, set()
    for role, want in (("eval", n_eval), ("train", n_train)):
        for group in shuffled[role]:
            if want is not None and len(out[role]) >= want:
                break
            if id(group) in used:
                continue
            used.add(id(group))  # a passage whose questions overshoot n stays out of the other split too
            for record in group:
                if want is not None and len(out[role]) >= want:
                    break
                if keep(record):
                    out[role].append(record)
                else:
                    dropped[role] += 1
    for role, want in (("eval", n_eval), ("train", n_train)):
        if not out[role]:
            raise UserError(f"the {role} split is empty after filtering ({dropped[role]} dropped as too long); "
                            "raise prepare.max_prompt_tokens or check the data")
        if want is not None and len(out[role]) < want:
            raise UserError(f"prepare.n_{role}={want}, but only {len(out[role])} {role} questions are available "
                            f"({dropped[role]} dropped as longer than prepare.max_prompt_tokens); lower "
                            f"prepare.n_{role}, or set it to null to take them all")
    return out, dropped


def shared_passages(splits: dict) -> int:
    """Eval passages that also appear in train (0 after a pool split; two given files can still share some)."""
    train = {r["context"] for r in splits["train"] if r.get("context")}
    return len({r["context"] for r in splits["eval"] if r.get("context")} & train)
