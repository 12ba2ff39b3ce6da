"""Bad input, damaged state and leaks: each gives one clear message and leaves nothing half-written."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcgrpo.data import load_splits
from mcgrpo.data.loaders import POOL, sample_splits
from mcgrpo.errors import EVAL_OOM, TRAIN_OOM, UserError, run_stage
from mcgrpo.fileio import write_json, write_text
from mcgrpo.params import PrepareParams
from mcgrpo.rewards import LETTERS, extract_answer


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no questions found"):
        load_splits(PrepareParams(source="table", path=str(tmp_path / "empty.jsonl"), config=None))


def test_eval_size_larger_than_the_data():
    pool = [{"id": str(i)} for i in range(10)]
    with pytest.raises(UserError, match=r"prepare.n_eval=20, but only 10 eval questions"):
        sample_splits({POOL: pool}, n_train=None, n_eval=20, seed=0)
    with pytest.raises(UserError, match=r"prepare.n_train=9, but only 4 train questions"):
        sample_splits({POOL: pool}, n_train=9, n_eval=6, seed=0)


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.5})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json(target, {"accuracy": Unserialisable()})
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left behind
    write_text(target, "new")
    assert target.read_text() == "new"


def test_adapter_that_does_not_match_the_base_model(tiny_model_params, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from mcgrpo.modeling import load_model
    from mcgrpo.tiny import PRESETS

    other = Gemma3ForCausalLM(Gemma3TextConfig(**{**PRESETS["tiny"], "hidden_size": 96, "vocab_size": 300}))
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError, match="does not fit base model"):
        load_model(tiny_model_params, adapter_dir=tmp_path / "adapter")
    with pytest.raises(UserError, match="no adapter_config.json"):
        load_model(tiny_model_params, adapter_dir=tmp_path / "missing")


def test_damaged_checkpoint_is_skipped(tmp_path, capsys):
    import safetensors.torch

    from mcgrpo.training import last_complete_checkpoint

    for step in (2, 4, 6):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        safetensors.torch.save_file({"w": torch.randn(64, 64)}, d / "adapter_model.safetensors")
        torch.save({"state": torch.randn(8)}, d / "optimizer.pt")
    with open(tmp_path / "checkpoint-6" / "adapter_model.safetensors", "r+b") as f:
        f.truncate(1000)  # killed while writing the weights
    (tmp_path / "checkpoint-4" / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-2"
    out = capsys.readouterr().out
    assert "skipping damaged checkpoint" in out and "checkpoint-6" in out and "optimizer.pt truncated" in out


@pytest.mark.parametrize("hint, keys", [(TRAIN_OOM, ["train.per_device_train_batch_size", "train.num_generations",
                                                     "train.max_completion_length"]),
                                        (EVAL_OOM, ["eval.batch_size", "eval.max_new_tokens"])])
def test_gpu_out_of_memory_names_the_params(capsys, hint, keys):
    def main():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main, oom_hint=hint)
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "ran out of memory" in err and all(k in err for k in keys)


def test_other_errors_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        run_stage(lambda: 1 / 0)


def test_trust_remote_code_is_off_unless_asked(monkeypatch, tiny_model_params):
    import transformers

    from mcgrpo.modeling import load_model

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(tiny_model_params)
    load_model(tiny_model_params.model_copy(update={"trust_remote_code": True}))
    assert seen == [False, True]


# --- extraction fuzzing ---------------------------------------------------------------------------

# Filler that can never form a declaration: no letters A-J in any case, no "answer"/"option"/"choice".
filler = st.text(alphabet=" .,;!?-\n0123456789klmnopqrstuvwxyz", max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=2, max_value=10))
def test_extraction_never_raises_and_stays_in_range(text, n_options):
    letter = extract_answer(text, n_options)
    assert letter is None or letter in LETTERS[:n_options]


@settings(max_examples=300, deadline=None)
@given(filler, st.sampled_from(LETTERS), filler, st.sampled_from(LETTERS), filler,
       # each form closes the letter ("Answer: A." not "Answer: A l"): "A" followed by a lowercase word is
       # read as the article by design (see test_rewards), so an open form would test that rule instead
       st.sampled_from(["<answer>{}</answer>", "Answer: {}.", "The answer is ({})", "\\boxed{{{}}}",
                        "**Answer:** {}\n"]))
def test_the_last_declaration_wins(pre, first, mid, last, post, form):
    text = f"{pre} {form.format(first)} {mid} {form.format(last)} {post}"
    assert extract_answer(text, n_options=10) == last
    assert extract_answer(text, n_options=LETTERS.index(last)) is None  # out of range: no answer, no fallback
