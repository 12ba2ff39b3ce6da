import csv
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcgrpo.data import load_splits, question_kind
from mcgrpo.data.loaders import POOL, sample_splits
from mcgrpo.errors import UserError
from mcgrpo.params import PrepareParams

FIVE = [  # 5-option items, answers as 1-based indices
    {"qid": "q1", "passage": "The sky is blue.", "q": "What colour is the sky?",
     "opts": ["red", "blue", "green", "black", "white"], "gold": 2},
    {"qid": "q2", "passage": "Cats purr.", "q": "Cats _ .", "opts": ["bark", "moo", "purr", "fly", "swim"], "gold": 3},
    {"qid": "q3", "passage": "Ice is cold.", "q": "Ice is", "opts": ["hot", "warm", "cold", "wet", "dry"], "gold": 3},
]
FIELDS = {"id": "qid", "context": "passage", "question": "q", "options": "opts", "answer": "gold",
          "answer_format": "index1"}


def params(**kw):
    return PrepareParams(**{"n_train": None, "n_eval": None, **kw})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_jsonl_five_options_index1(tmp_path):
    f = write_jsonl(tmp_path / "mc.jsonl", FIVE)
    splits = load_splits(params(source="table", path=str(f), config=None, fields=FIELDS))
    assert set(splits) == {POOL}
    first = splits[POOL][0]
    assert first == {"id": "q1", "context": "The sky is blue.", "question": "What colour is the sky?",
                     "options": ["red", "blue", "green", "black", "white"], "answer": "B", "source": "mc"}
    assert [r["answer"] for r in splits[POOL]] == ["B", "C", "C"]


def test_table_csv_per_letter_columns_letters_and_split_template(tmp_path):
    for split in ("train", "dev"):
        with open(tmp_path / f"d_{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["question", "A", "B", "C", "D", "E", "label"])
            w.writerow([f"{split} q1?", "a1", "b1", "c1", "d1", "e1", "E"])
            w.writerow([f"{split} q2?", "a2", "b2", "c2", "", "", "c"])  # 3 options: trailing blanks dropped
    fields = {"question": "question", "options": ["A", "B", "C", "D", "E"], "answer": "label", "context": None}
    splits = load_splits(params(source="table", path=str(tmp_path / "d_{split}.csv"), config=None,
                                train_split="train", eval_split="dev", fields=fields))
    assert [r["question"] for r in splits["eval"]] == ["dev q1?", "dev q2?"]
    assert splits["train"][0]["answer"] == "E" and len(splits["train"][0]["options"]) == 5
    assert splits["train"][1]["options"] == ["a2", "b2", "c2"] and splits["train"][1]["answer"] == "C"
    assert splits["train"][0]["context"] == "" and splits["train"][0]["id"] == "d_train-0"


def test_table_parquet_index0_and_json_array(tmp_path):
    rows = [{"question": "Q?", "options": ["x", "y"], "answer": 1, "article": "P"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    fields = {"context": "article", "answer_format": "index0"}
    rec = load_splits(params(source="table", path=str(tmp_path / "t.parquet"), config=None, fields=fields))[POOL][0]
    assert rec["answer"] == "B" and rec["options"] == ["x", "y"] and rec["context"] == "P"
    (tmp_path / "t.json").write_text(json.dumps(rows))
    rec = load_splits(params(source="table", path=str(tmp_path / "t.json"), config=None, fields=fields))[POOL][0]
    assert rec["answer"] == "B"


def test_csv_options_as_json_list(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('question,options,answer\nQ?,"[""x"", ""y"", ""z""]",C\n')
    rec = load_splits(params(source="table", path=str(f), config=None, fields={"context": None}))[POOL][0]
    assert rec["options"] == ["x", "y", "z"] and rec["answer"] == "C"


def make_race(root, files):
    """files: {(split, level, name): passage dict} in the official CMU layout."""
    for (split, level, name), passage in files.items():
        d = root / "RACE" / split / level
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.txt").write_text(json.dumps(passage))


RACE_PASSAGE = {"article": "Tom went to school.", "id": "x.txt",
                "questions": ["Where did Tom go?", "Tom went to _ ."],
                "options": [["home", "school", "park", "shop"], ["bed", "work", "school", "sea"]],
                "answers": ["B", "C"]}


@pytest.mark.parametrize("as_tarball", [False, True])
def test_race_folder_and_tarball(tmp_path, as_tarball):
    make_race(tmp_path, {("train", "high", "1"): RACE_PASSAGE, ("train", "middle", "7"): RACE_PASSAGE,
                         ("test", "high", "2"): RACE_PASSAGE, ("dev", "middle", "3"): RACE_PASSAGE})
    path = tmp_path / "RACE"
    if as_tarball:
        path = tmp_path / "RACE.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(tmp_path / "RACE", arcname="RACE")
    splits = load_splits(params(source="race", path=str(path), config="all"))
    assert len(splits["train"]) == 4 and len(splits["eval"]) == 2
    assert {r["source"] for r in splits["train"]} == {"race-high", "race-middle"}
    assert splits["eval"][1] == {"id": "high2-1", "context": "Tom went to school.", "question": "Tom went to _ .",
                                 "options": ["bed", "work", "school", "sea"], "answer": "C", "source": "race-high"}
    middle = load_splits(params(source="race", path=str(path), config="middle", eval_split="validation"))
    assert {r["source"] for r in middle["train"]} == {"race-middle"} and len(middle["eval"]) == 2


def test_race_missing_split_is_clear(tmp_path):
    make_race(tmp_path, {("train", "high", "1"): RACE_PASSAGE})
    with pytest.raises(UserError, match="no RACE questions for split 'test'"):
        load_splits(params(source="race", path=str(tmp_path / "RACE"), config="all"))


def test_quality_official_jsonl(tmp_path):
    article = {"article_id": "a1", "set_unique_id": "s1", "title": "T", "article": "Long story.",
               "questions": [{"question": "Why?", "question_unique_id": "s1-q0",
                              "options": ["w", "x", "y", "z"], "gold_label": 4},
                             {"question": "Who?", "options": ["p", "q", "r", "s"], "gold_label": 1}]}
    for split in ("train", "dev"):
        write_jsonl(tmp_path / f"QuALITY.{split}", [article])
    splits = load_splits(params(source="quality", path=str(tmp_path / "QuALITY.{split}"), config=None,
                                eval_split="dev"))
    assert [r["answer"] for r in splits["eval"]] == ["D", "A"]
    assert splits["eval"][0]["id"] == "s1-q0" and splits["eval"][1]["id"] == "s1-1"
    assert splits["train"][0]["source"] == "quality" and splits["train"][0]["context"] == "Long story."


def test_quality_test_split_without_labels(tmp_path):
    f = write_jsonl(tmp_path / "q.test", [{"article": "x", "questions": [{"question": "?", "options": ["a", "b"]}]}])
    with pytest.raises(UserError, match="no gold_label"):
        load_splits(params(source="quality", path=str(f), config=None))


def test_hf_loader_on_a_local_dataset_folder(tmp_path):
    # `datasets.load_dataset` reads a local folder exactly as it reads a hub id: no network needed.
    rows = [{"example_id": f"high{i}.txt", "article": "P", "question": f"Q{i}?", "options": ["a", "b", "c", "d"],
             "answer": "ABCD"[i % 4]} for i in range(4)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:2])
    splits = load_splits(params(source="hf", path=str(tmp_path), config=None))
    assert len(splits["train"]) == 4 and len(splits["eval"]) == 2
    assert splits["train"][1]["answer"] == "B" and splits["train"][1]["id"] == "high1.txt"


@pytest.mark.parametrize("row, message", [
    ({"question": "Q", "options": ["a", "b"]}, "missing field 'answer'"),
    ({"question": "Q", "options": ["a", "b"], "answer": "C"}, "out of range"),
    ({"question": "Q", "options": ["a"], "answer": "A"}, "need 2 to 10"),
    ({"question": "Q", "options": [str(i) for i in range(11)], "answer": "A"}, "need 2 to 10"),
    ({"question": "Q", "options": "a b", "answer": "A"}, "options must be a list"),
    ({"question": "", "options": ["a", "b"], "answer": "A"}, "question is missing"),
    ({"question": "Q", "options": ["a", "b"], "answer": "AB"}, "not a letter"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    good = {"question": "ok", "options": ["a", "b"], "answer": "A"}
    f = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(UserError, match=message) as err:
        load_splits(params(source="table", path=str(f), config=None, fields={"context": None}))
    assert f"{f}:2" in str(err.value)


def test_malformed_json_and_non_utf8(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "Q", "options": ["a", "b"], "answer": "A"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        load_splits(params(source="table", path=str(f), config=None, fields={"context": None}))
    f.write_bytes(b'{"question": "\xff", "options": ["a", "b"], "answer": "A"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: not UTF-8"):
        load_splits(params(source="table", path=str(f), config=None, fields={"context": None}))


def test_duplicate_ids_rejected(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [FIVE[0], FIVE[0]])
    with pytest.raises(UserError, match="duplicate id 'q1'"):
        load_splits(params(source="table", path=str(f), config=None, fields=FIELDS))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_splits(params(source="table", path=str(tmp_path / "nope.jsonl"), config=None))


def test_sampling_is_deterministic_disjoint_and_counts_drops():
    pool = [{"id": str(i), "question": "q" * (i % 7)} for i in range(100)]
    keep = lambda r: len(r["question"]) != 3  # noqa: E731
    a, dropped = sample_splits({POOL: pool}, n_train=30, n_eval=20, seed=5, keep=keep)
    b, _ = sample_splits({POOL: pool}, n_train=30, n_eval=20, seed=5, keep=keep)
    c, _ = sample_splits({POOL: pool}, n_train=30, n_eval=20, seed=6, keep=keep)
    assert a == b and a != c
    assert len(a["train"]) == 30 and len(a["eval"]) == 20
    assert not {r["id"] for r in a["train"]} & {r["id"] for r in a["eval"]}
    assert all(keep(r) for r in a["train"] + a["eval"]) and sum(dropped.values()) > 0


def test_sampling_everything_filtered_is_an_error():
    with pytest.raises(UserError, match="eval split is empty"):
        sample_splits({"train": [{"id": "1"}], "eval": [{"id": "2"}]}, None, None, 0, keep=lambda r: False)
    with pytest.raises(UserError, match=r"prepare.n_eval=2, but only 1 eval questions are available .1 dropped"):
        sample_splits({"train": [{"id": "1"}], "eval": [{"id": "2"}, {"id": "3", "x": 1}]}, None, 2, 0,
                      keep=lambda r: "x" not in r)


@pytest.mark.parametrize("q, kind", [("The writer thinks _ .", "fill-in"), ("What did Tom do?", "wh"),
                                     ("Why is the sky blue?", "wh"), ("Tom is a teacher.", "other"),
                                     ("According to the passage, which is true?", "wh")])
def test_question_kind(q, kind):
    assert question_kind(q) == kind
