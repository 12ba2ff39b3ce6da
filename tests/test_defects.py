"""Wrong data in, wrong results out: each case a new user hit with a real dataset or a fault (issue 16)."""

import csv
import json

import pytest

from mcgrpo.data import load_splits
from mcgrpo.data.loaders import POOL, sample_splits, shared_passages
from mcgrpo.errors import UserError
from mcgrpo.params import ModelParams, PrepareParams, parse_params


def params(**kw):
    return PrepareParams(**{"n_train": None, "n_eval": None, "config": None, **kw})


def write_csv(path, header, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


LETTER_COLUMNS = {"id": "id", "question": "q", "options": ["A", "B", "C", "D"], "answer": "gold", "context": None}


def test_blank_option_before_a_filled_one_is_an_error_naming_the_line(tmp_path):
    f = write_csv(tmp_path / "mc.csv", ["id", "q", "A", "B", "C", "D", "gold"],
                  [["1", "Q1?", "a", "b", "c", "d", "D"], ["2", "Q2?", "a", "b", "", "d", "D"]])
    with pytest.raises(UserError, match=r"mc\.csv:3: option C is blank but a later one is not"):
        load_splits(params(source="table", path=str(f), fields=LETTER_COLUMNS))


def test_trailing_blank_options_are_fine(tmp_path):
    f = write_csv(tmp_path / "mc.csv", ["id", "q", "A", "B", "C", "D", "gold"], [["1", "Q?", "a", "b", "c", "", "C"]])
    record = load_splits(params(source="table", path=str(f), fields=LETTER_COLUMNS))[POOL][0]
    assert record["options"] == ["a", "b", "c"] and record["answer"] == "C"


def test_an_option_column_missing_from_the_file_is_an_error(tmp_path):
    f = write_csv(tmp_path / "mc.csv", ["id", "q", "A", "B", "C", "D", "gold"], [["1", "Q?", "a", "b", "c", "d", "C"]])
    fields = {**LETTER_COLUMNS, "options": ["A", "B", "C", "D", "e"]}
    with pytest.raises(UserError, match=r"mc\.csv:2: option column\(s\) \['e'\] not in the file"):
        load_splits(params(source="table", path=str(f), fields=fields))


def test_a_pool_is_split_by_passage(tmp_path):
    rows = [{"id": f"{p}-{q}", "context": f"passage {p}", "question": f"question {q}?", "options": ["x", "y"],
             "answer": "A"} for p in range(20) for q in range(4)]  # QuALITY-like: many questions per passage
    f = tmp_path / "pool.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_splits(params(source="table", path=str(f), fields={"id": "id", "context": "context"}))
    out, _ = sample_splits(splits, n_train=40, n_eval=18, seed=3)
    assert len(out["eval"]) == 18 and len(out["train"]) == 40
    assert shared_passages(out) == 0
    assert {r["context"] for r in out["eval"]}.isdisjoint({r["context"] for r in out["train"]})


def test_the_training_sample_does_not_depend_on_the_eval_split():
    # Settings chosen on RACE dev must train the same model as the run reported on test: only the eval
    # side may change when prepare.eval_split (or n_eval) does.
    q = lambda split, i: {"id": f"{split}-{i}", "context": f"{split} passage {i}", "question": "q?",
                          "options": ["x", "y"], "answer": "A"}
    train = [q("train", i) for i in range(50)]
    dev, test = [q("dev", i) for i in range(30)], [q("test", i) for i in range(37)]
    on_dev, _ = sample_splits({"train": train, "eval": dev}, n_train=20, n_eval=10, seed=4)
    on_test, _ = sample_splits({"train": train, "eval": test}, n_train=20, n_eval=None, seed=4)
    assert [r["id"] for r in on_dev["train"]] == [r["id"] for r in on_test["train"]]
    assert len(on_test["eval"]) == 37 and {r["id"] for r in on_dev["eval"]} <= {r["id"] for r in dev}
    other_seed, _ = sample_splits({"train": train, "eval": dev}, n_train=20, n_eval=10, seed=5)
    assert [r["id"] for r in other_seed["train"]] != [r["id"] for r in on_dev["train"]]


def test_shared_passages_are_counted():
    r = {"id": "1", "context": "same text", "question": "q", "options": ["a", "b"], "answer": "A"}
    assert shared_passages({"train": [r], "eval": [{**r, "id": "2"}]}) == 1


def test_metric_keys_do_not_depend_on_the_predictions():
    from mcgrpo.metrics import summarize

    def rows(preds):
        return [{"id": str(i), "variant": "direct", "pred": p, "answer": "A", "correct": p == "A", "format_ok": True,
                 "n_tokens": 1, "n_options": 4} for i, p in enumerate(preds)]

    only_a, spread = summarize(rows(["A", "A"]))["direct"], summarize(rows(["B", "D"]))["direct"]
    assert list(only_a["pred_letters"]) == list(spread["pred_letters"]) == ["A", "B", "C", "D"]
    assert only_a["pred_letters"]["C"] == 0.0 and list(only_a["gold_letters"]) == ["A", "B", "C", "D"]


def test_damaged_adapter_is_a_clear_error(tiny_model_params, tiny_adapter_dir, tmp_path):
    import shutil

    from mcgrpo.modeling import load_model

    broken = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])  # as `truncate -s`
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: unreadable.*dvc checkout models/adapter"):
        load_model(tiny_model_params, adapter_dir=broken)


@pytest.mark.parametrize("completion", [None, 3, ["a", "b"], {"x": 1}])
def test_score_refuses_a_completion_that_is_not_text(completion, tmp_path, capsys):
    from mcgrpo.cli import main

    f = tmp_path / "out.jsonl"
    f.write_text(json.dumps({"completion": "C", "answer": "C"}) + "\n" + json.dumps({"completion": completion,
                                                                                      "answer": "C"}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(f)])
    assert exit_info.value.code == 2
    assert f"{f}:2: completion must be text" in capsys.readouterr().err


def test_a_mistyped_local_folder_fails_at_once(tmp_path, monkeypatch):
    from mcgrpo.modeling import load_model, load_tokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny-gemma").mkdir(parents=True)
    for name, match in (("models/tiny-gema", r"no such folder \(models holds: models/tiny-gemma\)"),
                        ("gemma-3-270m.gguf", "a GGUF file; convert it first with `mcgrpo from-gguf")):
        with pytest.raises(UserError, match=match):
            load_tokenizer(ModelParams(name=name))
        with pytest.raises(UserError, match=match):
            load_model(ModelParams(name=name, backend="transformers"))


def test_csv_with_a_utf8_bom_reads(tmp_path):
    f = write_csv(tmp_path / "excel.csv", ["id", "q", "A", "B", "gold"], [["1", "Q?", "a", "b", "B"]],
                  encoding="utf-8-sig")
    assert f.read_bytes().startswith(b"\xef\xbb\xbf")
    record = load_splits(params(source="table", path=str(f), fields={**LETTER_COLUMNS, "options": ["A", "B"]}))[POOL][0]
    assert record["id"] == "1" and record["answer"] == "B"


def test_a_list_in_the_question_column_says_so(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": ["What?"], "options": ["a", "b"], "answer": "A"}) + "\n")
    with pytest.raises(UserError, match=r"q\.jsonl:1: question is a list, not text"):
        load_splits(params(source="table", path=str(f), fields={"context": None}))


def test_duplicate_ids_name_both_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    row = {"id": "x", "question": "Q?", "options": ["a", "b"], "answer": "A"}
    f.write_text("".join(json.dumps(r) + "\n" for r in (row, {**row, "id": "y"}, row)))
    with pytest.raises(UserError, match=r"d\.jsonl:3: duplicate id 'x' \(first at .*d\.jsonl:1\)"):
        load_splits(params(source="table", path=str(f), fields={"id": "id", "context": None}))


def test_the_batch_shape_error_does_not_print_the_whole_section():
    with pytest.raises(UserError) as err:
        parse_params({"train": {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 1,
                                "num_generations": 2}})
    message = str(err.value)
    assert "must be a multiple of num_generations (2)" in message
    assert "learning_rate" not in message and "lora" not in message  # not the section's every key


def test_answers_given_as_option_text(tmp_path):
    f = tmp_path / "t.jsonl"
    rows = [{"question": "Q?", "options": ["red", "blue"], "answer": " blue "},
            {"question": "R?", "options": ["red", "blue"], "answer": "green"}]
    f.write_text(json.dumps(rows[0]) + "\n")
    fields = {"context": None, "answer_format": "text"}
    assert load_splits(params(source="table", path=str(f), fields=fields))[POOL][0]["answer"] == "B"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"t\.jsonl:2: answer 'green' is not the text of any option"):
        load_splits(params(source="table", path=str(f), fields=fields))


def test_nested_fields_by_dotted_path(tmp_path):
    f = tmp_path / "csqa.jsonl"  # CommonsenseQA's export
    row = {"id": "c1", "question": {"stem": "Where do fish live?"}, "choices": {"label": ["A", "B"],
                                                                               "text": ["water", "trees"]},
           "answerKey": "A"}
    f.write_text(json.dumps(row) + "\n")
    fields = {"id": "id", "context": None, "question": "question.stem", "options": "choices.text", "answer": "answerKey"}
    record = load_splits(params(source="table", path=str(f), fields=fields))[POOL][0]
    assert record["question"] == "Where do fish live?" and record["options"] == ["water", "trees"]
    with pytest.raises(UserError, match="missing field 'choices.txt'"):
        load_splits(params(source="table", path=str(f), fields={**fields, "options": "choices.txt"}))


@pytest.mark.parametrize("variant", ["direct", "cot", "completion_cot"])
def test_prompts_without_a_passage_do_not_mention_one(variant):
    from mcgrpo.prompts import instructions

    arc = {"context": "", "question": "Which gas do plants take in?", "options": ["oxygen", "carbon dioxide"]}
    race = {**arc, "context": "Plants take in carbon dioxide."}
    assert "passage" not in instructions(arc, variant).lower() and "article" not in instructions(arc, variant).lower()
    assert instructions(race, variant) != instructions(arc, variant)


def test_a_diverged_run_stops_with_a_message():
    import math

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from mcgrpo.training import stop_on_non_finite_callback

    callback, state = stop_on_non_finite_callback(), TrainerState(global_step=39)
    args = TrainingArguments(output_dir="unused", report_to="none")
    callback.on_log(args, state, TrainerControl(), logs={"loss": 0.1, "grad_norm": 2.0})  # finite: goes on
    for logs in ({"loss": math.nan}, {"loss": 0.1, "grad_norm": math.inf}):
        with pytest.raises(UserError, match="training diverged at step 39: .* is (nan|inf); lower train.learning_rate"):
            callback.on_log(args, state, TrainerControl(), logs=logs)


def test_plot_tables_quote_values_with_commas(tmp_path):
    # A source name with a comma (a table's `source` column is free text) once split a row into extra columns.
    import csv

    from mcgrpo.plots import write_csv

    rows = [{"label": "quality, hard / base", "accuracy": 0.5}, {"label": 'the "middle" set', "accuracy": 0.25}]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="") as f:
        assert [{k: (float(v) if k == "accuracy" else v) for k, v in r.items()} for r in csv.DictReader(f)] == rows
