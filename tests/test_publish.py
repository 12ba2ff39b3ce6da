import json

import pytest
import torch
from huggingface_hub import ModelCard
from test_report import BASE, RECORDS, TUNED

from mcgrpo.errors import UserError
from mcgrpo.metrics import compare, summarize
from mcgrpo.params import Params, PublishParams
from mcgrpo.publish import build_folder, card_text, hub_token, pick_example, push

TRAIN = {"backend": "transformers", "steps": 7, "reward_first": 0.1, "reward_last10": 0.6}
FAKE_TOKEN = "hf_FAKEpublishTokenNeverShown0123456789"


def make_card(merged=False, repo_id="someone/gemma-race-grpo"):
    return card_text(Params(), comparison=compare(BASE, TUNED), tuned_metrics=summarize(TUNED), train_metrics=TRAIN,
                     example=pick_example(RECORDS, TUNED, "cot"), merged=merged, repo_id=repo_id)


def test_the_card_carries_hub_metadata_and_the_results():
    text = make_card()
    card = ModelCard(text)
    meta = card.data.to_dict()
    assert meta["base_model"] == "unsloth/gemma-3-1b-it" and meta["datasets"] == ["ehovy/race"]
    assert meta["license"] == "gemma" and meta["library_name"] == "peft"
    assert {"grpo", "trl", "unsloth", "reasoning"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    accuracy = {r["metrics"][0]["name"]: r["metrics"][0]["value"] for r in results}
    assert accuracy == {"accuracy (cot)": summarize(TUNED)["cot"]["accuracy"]} == {"accuracy (cot)": 0.5}
    assert results[0]["dataset"] == {"name": "ehovy/race", "type": "ehovy/race", "config": "all", "split": "test"}
    c = compare(BASE, TUNED)["cot"]
    assert f"| cot | {c['base_accuracy']} | {c['finetuned_accuracy']} |" in text  # the comparison table
    assert "| LoRA | r=16, alpha=32" in text and "learning_rate" not in meta  # training params in the body
    assert "tuned says 9" in text  # the example: the shortest question the model got right (q9, 91 chars)
    assert 'PeftModel.from_pretrained(model, "someone/gemma-race-grpo")' in text
    merged = ModelCard(make_card(merged=True)).data.to_dict()
    assert merged["library_name"] == "transformers"


def test_publish_params_need_a_repo_to_push():
    with pytest.raises(ValueError, match="repo_id is not set"):
        PublishParams(push=True)
    with pytest.raises(ValueError, match="user-or-org/name"):
        PublishParams(repo_id="no slash")
    assert PublishParams(push=True, repo_id="me/model").push


def test_adapter_and_merged_folders(tiny_model_params, tiny_adapter_dir, tmp_path):
    adapter = tiny_adapter_dir
    folder = build_folder(tmp_path / "publish", make_card(), adapter_dir=adapter)
    names = {p.name for p in folder.iterdir()}
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= names
    assert ModelCard.load(folder / "README.md").data.base_model == "unsloth/gemma-3-1b-it"

    from transformers import AutoModelForCausalLM

    from mcgrpo.modeling import load_model

    model, tok, _ = load_model(tiny_model_params, adapter_dir=adapter)
    folder = build_folder(tmp_path / "merged", make_card(merged=True), adapter_dir=adapter, merged_model=model,
                          tokenizer=tok)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[2, 10, 20, 30]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)  # the adapter is in the weights
    assert not (folder / "adapter_config.json").exists()


def test_a_fully_fine_tuned_model_is_published_as_it_is(tiny_model_dir, tmp_path):
    # train.finetune=full leaves a whole model in models/adapter: its folder and card need no peft
    import shutil

    whole = tmp_path / "adapter"
    shutil.copytree(tiny_model_dir, whole)
    params = Params.model_validate({"train": {"finetune": "full", "variant": "completion_option"}})
    card = card_text(params, comparison=compare(BASE, TUNED), tuned_metrics=summarize(TUNED), train_metrics=TRAIN,
                     example=None, merged=False, repo_id="someone/x")
    assert "fine-tuned in full" in card and "PeftModel" not in card and "full (every weight)" in card
    assert ModelCard(card).data.to_dict()["library_name"] == "transformers"
    assert "options unlettered" in card  # a completion variant's prompt, not the chat instructions
    folder = build_folder(tmp_path / "publish", card, adapter_dir=whole)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}


def test_a_missing_adapter_leaves_nothing_behind(tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(UserError, match="dvc repro train"):
        build_folder(tmp_path / "publish", "card", adapter_dir=tmp_path / "adapter")
    assert not (tmp_path / "publish").exists() and list(tmp_path.iterdir()) == [tmp_path / "adapter"]


def test_no_token_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached login either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(UserError, match="export HF_TOKEN=.*hf auth login"):
        hub_token()
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert hub_token() == FAKE_TOKEN


def test_an_unreachable_hub_fails_cleanly_without_the_token(tmp_path):
    (tmp_path / "publish").mkdir()
    (tmp_path / "publish" / "README.md").write_text("card")
    with pytest.raises(UserError) as err:  # a closed local port: the same failure as no network
        push(tmp_path / "publish", "me/model", private=True, commit_message="m", token=FAKE_TOKEN,
             endpoint="http://127.0.0.1:9")
    message = str(err.value)
    assert "Nothing was committed" in message and "hf upload me/model" in message and FAKE_TOKEN not in message


def test_push_creates_the_repo_and_uploads_one_commit(monkeypatch, tmp_path):
    calls = []

    class FakeApi:  # the network call itself cannot be made from here; everything up to it is real
        def __init__(self, token=None, endpoint=None):
            calls.append(("init", token == FAKE_TOKEN))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = push(tmp_path, "me/model", private=False, commit_message="first", token=FAKE_TOKEN)
    assert url == "https://huggingface.co/me/model/commit/abc"
    assert calls == [("init", True),
                     ("create_repo", "me/model", {"private": False, "exist_ok": True, "repo_type": "model"}),
                     ("upload_folder", {"repo_id": "me/model", "folder_path": str(tmp_path),
                                        "commit_message": "first", "repo_type": "model"})]
    assert FAKE_TOKEN not in json.dumps(calls)
