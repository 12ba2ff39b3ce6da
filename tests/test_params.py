from pathlib import Path

import pytest
import yaml

from mcgrpo.errors import UserError
from mcgrpo.params import Params, TrainParams, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_valid_and_sets_every_key():
    # dvc.yaml leaves params.py out of the stage deps, which is only sound if params.yaml sets every key.
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(d, prefix=""):
        return {f"{prefix}{k}" for k in d} | {x for k, v in d.items() if isinstance(v, dict) and k != "reward_weights"
                                              for x in keys(v, f"{prefix}{k}.")}
    assert keys(raw) == keys(Params().model_dump())
    p = load_params(ROOT / "params.yaml")
    assert p.model.name == "unsloth/gemma-3-1b-it" and p.prepare.path == "ehovy/race"


def test_dvc_exp_style_strings_are_numbers():
    # `dvc exp run -S train.learning_rate=1e-5` writes 1e-05, which YAML reads as a string
    raw = yaml.safe_load("train:\n  learning_rate: 1e-05\n  max_steps: '20'\n")
    assert isinstance(raw["train"]["learning_rate"], str)
    p = parse_params(raw)
    assert p.train.learning_rate == 1e-5 and p.train.max_steps == 20


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(UserError) as err:
        parse_params({"train": {"learnin_rate": 1e-5}}, "params.yaml")
    assert "params.yaml" in str(err.value) and "train.learnin_rate: unknown key (did you mean 'learning_rate'?)" \
        in str(err.value)
    with pytest.raises(UserError, match="trian: unknown key .did you mean 'train'"):
        parse_params({"trian": {}})


@pytest.mark.parametrize("raw, key", [
    ({"train": {"max_steps": 0}}, "train.max_steps"),
    ({"train": {"max_steps": -3}}, "train.max_steps"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate"),
    ({"eval": {"variants": ["direct", "socratic"]}}, "eval.variants"),
    ({"model": {"dtype": "float16"}}, "model.dtype"),
    ({"train": {"reward_weights": {"corect": 1.0}}}, "train.reward_weights"),
    ({"train": {"num_generations": 3}}, "train"),  # 8 x 2 completions is not a multiple of 3
    ({"prepare": {"source": "csv"}}, "prepare.source"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert key in str(err.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_rollout_engine_resolution(capsys):
    from mcgrpo.params import TrainParams
    from mcgrpo.training import rollout_engine

    assert rollout_engine(TrainParams(), "transformers") == "fast"
    assert rollout_engine(TrainParams(), "unsloth") == "hf"  # Unsloth patches generation its own way
    assert rollout_engine(TrainParams(top_p=0.9), "transformers") == "hf"  # fast has no top-p
    assert rollout_engine(TrainParams(rollout_engine="hf_static"), "transformers") == "hf_static"
    with pytest.raises(UserError, match="rollout_engine=fast needs the transformers backend"):
        rollout_engine(TrainParams(rollout_engine="fast"), "unsloth")
    with pytest.raises(UserError, match="train.top_p to 1.0"):
        parse_params({"train": {"rollout_engine": "fast", "top_p": 0.9}})
    # cuDNN's attention is refused with padding to a multiple (NaN gradients at step 1 on an H200), allowed without
    with pytest.raises(UserError, match="train.pad_to_multiple_of to null"):
        parse_params({"train": {"cudnn_attention": True}})
    assert parse_params({"train": {"cudnn_attention": True, "pad_to_multiple_of": None}}).train.cudnn_attention
    # vLLM is not installed here: asking for it falls back, and says so
    assert rollout_engine(TrainParams(use_vllm=True), "transformers") == "fast"
    assert "vllm is not installed" in capsys.readouterr().out


@pytest.mark.parametrize("section, key, old, new", [("eval", "engine", "static", "fast"),
                                                    ("train", "rollout_engine", "generate", "hf"),
                                                    ("train", "rollout_engine", "static", "hf_static"),
                                                    ("train", "rollout_engine", "continuous", "hf_continuous")])
def test_renamed_engines_are_refused_with_the_new_name(section, key, old, new):
    with pytest.raises(UserError, match=f"{section}.{key}: .*'{old}' was renamed \\(did you mean '{new}'\\?\\)"):
        parse_params({section: {key: old}})
    assert getattr(getattr(parse_params({section: {key: new}}), section), key) == new


def test_write_params_validates_before_writing(tmp_path):
    from mcgrpo.params import deep_merge, read_raw_params, write_params

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: 1.0e-05\n")
    raw = read_raw_params(path)
    with pytest.raises(UserError, match="train.learning_rate"):
        write_params(path, deep_merge(raw, {"train": {"learning_rate": -1}}))
    assert read_raw_params(path) == {"train": {"learning_rate": 1e-05}}  # left as it was
    assert write_params(path, deep_merge(raw, {"train": {"beta": 0.1}})).train.beta == 0.1
    assert read_raw_params(path) == {"train": {"learning_rate": 1e-05, "beta": 0.1}}


def test_auto_backend_trains_through_transformers_where_the_fast_rollouts_apply(monkeypatch):
    """Under Unsloth the rollouts are TRL's own (~6x slower a step at the 1B shape): auto keeps the fast path,
    and takes Unsloth (when installed, as faked here) only where the fast rollouts do not apply."""
    from mcgrpo import modeling
    from mcgrpo.training import rollout_engine, training_backend

    monkeypatch.setattr(modeling, "pick_backend", lambda requested: "unsloth" if requested in ("auto", "unsloth")
                        else requested)
    for tp, backend in [(TrainParams(), "transformers"), (TrainParams(rollout_engine="fast"), "transformers"),
                        (TrainParams(top_p=0.9), "unsloth"), (TrainParams(rollout_engine="hf"), "unsloth")]:
        assert training_backend("auto", tp) == backend, tp
    assert rollout_engine(TrainParams(), training_backend("auto", TrainParams())) == "fast"
    assert training_backend("unsloth", TrainParams(rollout_engine="hf")) == "unsloth"  # asked for by name
    assert training_backend("auto", TrainParams(num_processes=2)) == "transformers"


def test_override_applies_a_dvc_style_assignment():
    from mcgrpo.params import override

    raw = {"train": {"learning_rate": 1e-5, "reward_weights": {"correct": 1.0, "format": 0.2}}}
    out = override(override(raw, "train.reward_weights.format=0"), "eval.variants=[completion_direct]")
    assert out["train"] == {"learning_rate": 1e-5, "reward_weights": {"correct": 1.0, "format": 0}}
    assert out["eval"] == {"variants": ["completion_direct"]}
    assert raw["train"]["reward_weights"]["format"] == 0.2  # the input is left as it was
    with pytest.raises(UserError, match="expected section.key=value"):
        override(raw, "learning_rate=1e-5")
