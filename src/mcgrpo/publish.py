"""Publish the fine-tuned model: a folder with the adapter (or the merged model) and a model card
written with huggingface_hub's ModelCard, uploaded to the Hub in one commit when asked.

The token comes from HF_TOKEN or a cached `hf auth login`, read by huggingface_hub itself; this
module only checks that one exists and never prints, logs or writes it.
"""

import shutil
from pathlib import Path

from mcgrpo.errors import UserError
from mcgrpo.fileio import atomic_path
from mcgrpo.metrics import format_comparison, markdown_table, training_rows
from mcgrpo.modeling import is_whole_model
from mcgrpo.prompts import INSTRUCTIONS, LAYOUTS, format_question, is_chat

TAGS = ["grpo", "trl", "unsloth", "reasoning", "multiple-choice", "reading-comprehension", "lora", "mcgrpo"]
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def hub_dataset(prepare) -> str | None:
    """The dataset's hub id, when it came from the hub (local files have none)."""
    return prepare.path if prepare.source == "hf" else None


def eval_results(params, tuned_metrics: dict) -> list:
    """model-index entries: the fine-tuned accuracy per prompt variant (and log-likelihood scoring)."""
    from huggingface_hub import EvalResult

    pp = params.prepare
    dataset = hub_dataset(pp) or Path(pp.path).name
    return [EvalResult(task_type="multiple-choice", task_name="Multiple-choice reading comprehension",
                       dataset_type=dataset, dataset_name=dataset, dataset_config=pp.config, dataset_split=pp.eval_split,
                       metric_type="accuracy", metric_value=m["accuracy"], metric_name=f"accuracy ({variant})")
            for variant, m in tuned_metrics.items()]


def card_text(params, *, comparison: dict, tuned_metrics: dict, train_metrics: dict, example: dict | None,
              merged: bool, repo_id: str | None) -> str:
    """The model card: metadata (base model, datasets, license, tags, model-index) and a readable body."""
    from huggingface_hub import ModelCard, ModelCardData

    p, tp = params, params.train
    name = repo_id or f"{Path(p.model.name).name}-mcgrpo"
    whole = merged or tp.finetune == "full"  # a model that loads by itself, no peft
    data = ModelCardData(
        base_model=p.model.name, datasets=[d for d in [hub_dataset(p.prepare)] if d], license=p.publish.license,
        library_name="transformers" if whole else "peft", pipeline_tag="text-generation", tags=TAGS,
        model_name=name, eval_results=eval_results(p, tuned_metrics))
    what = ("the base model fine-tuned in full" if tp.finetune == "full" else
            "the base model with the LoRA adapter merged in" if merged else "a LoRA adapter")
    load = (f'model = AutoModelForCausalLM.from_pretrained("{name}")\ntokenizer = AutoTokenizer.from_pretrained("{name}")'
            if whole else
            f'model = AutoModelForCausalLM.from_pretrained("{p.model.name}")\n'
            f'model = PeftModel.from_pretrained(model, "{name}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")')
    body = [
        f"# {name}",
        f"{what.capitalize()} for [`{p.model.name}`](https://huggingface.co/{p.model.name}), trained with GRPO "
        "(TRL) against a verifiable reward to reason step by step on multiple-choice reading comprehension. "
        f"Made with the mcgrpo DVC pipeline: dataset `{p.prepare.path}` (`{p.prepare.source}`), "
        f"{p.prepare.n_train or 'all'} training questions, {train_metrics.get('steps')} steps.",
        "## Results",
        f"Accuracy on {p.prepare.n_eval or 'all'} questions of the `{p.prepare.eval_split}` split, base model vs "
        "this model, same prompts and decoding; the interval is a paired bootstrap, p an exact McNemar test.",
        format_comparison(comparison),
        "## Prompt",
        *(["One user turn (Gemma has no system role): the passage, the question and lettered options, then:",
           f"> {INSTRUCTIONS[tp.variant]}"] if is_chat(tp.variant) else
          [f"Plain text for a pretrained model (no chat template), `{tp.variant}`: the article, the question and the "
           f"options, then {INSTRUCTIONS[tp.variant] or LAYOUTS[tp.variant]}."]),
        "## Usage",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        + ("" if whole else "from peft import PeftModel\n") + load + "\n```",
        "## Training",
        markdown_table(["param", "value"], training_rows(tp, train_metrics)),
    ]
    if example:
        body += ["## Example", f"Question `{example['id']}` (gold answer {example['answer']}):",
                 f"```text\n{example['question_text']}\n```", "This model's answer:",
                 f"```text\n{example['completion']}\n```"]
    body += ["## Limitations",
             "The reward checks the final letter only, so reasoning that reaches the right letter for a wrong reason "
             "is rewarded too. Check the base model's license and the dataset's terms (RACE: non-commercial research "
             "use) before use."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n").content


def pick_example(records: list[dict], tuned_rows: list[dict], variant: str, max_chars: int = 1500) -> dict | None:
    """The shortest eval question the model got right under the trained prompt (else the shortest one)."""
    by_id = {r["id"]: r for r in records}
    rows = sorted((r for r in tuned_rows if r["variant"] == variant and r["id"] in by_id),
                  key=lambda r: (not r["correct"], len(by_id[r["id"]]["context"]), r["id"]))
    if not rows:
        return None
    row, record = rows[0], by_id[rows[0]["id"]]
    return {"id": row["id"], "answer": record["answer"], "question_text": format_question(record)[:max_chars],
            "completion": row["completion"][:max_chars]}


def build_folder(dest, card: str, *, adapter_dir, merged_model=None, tokenizer=None) -> Path:
    """Write dest/ atomically: README.md (the card) plus the adapter files or the merged model."""
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        if merged_model is not None:
            merged_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        else:
            for path in Path(adapter_dir).iterdir():  # adapter weights/config and the tokenizer the stage saved
                if path.is_file() and path.name != "README.md":
                    shutil.copy2(path, tmp / path.name)
            # an adapter, or (train.finetune=full) a whole model, published as it is
            missing = [f for f in (("config.json",) if is_whole_model(adapter_dir) else ADAPTER_FILES)
                       if not (tmp / f).exists()]
            if missing:
                raise UserError(f"{adapter_dir}: missing {missing}; run the train stage first (dvc repro train)")
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(dest)


def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, else a cached login); a clear error if there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError("publish.push is true but no Hugging Face token was found: export HF_TOKEN=... (a token with "
                        "write access) or run `hf auth login`, then `dvc repro publish`; or set publish.push: false")
    return token


def push(folder, repo_id: str, *, private: bool, commit_message: str, token: str, endpoint: str | None = None) -> str:
    """Create the repo if needed and upload the folder as one commit; returns the commit URL.

    One commit means the Hub never holds half an upload. Errors are reported without the token
    (huggingface_hub sends it in a header, never in a URL or message).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token, endpoint=endpoint)  # endpoint None: the Hub (or HF_ENDPOINT)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 repo_type="model")
    except Exception as err:  # network, auth and offline-mode errors come from several libraries
        kind = type(err).__name__
        raise UserError(f"upload of {folder} to https://huggingface.co/{repo_id} failed ({kind}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}). Nothing was committed to the Hub; "
                        f"{folder} is complete. Check the network, HF_HUB_OFFLINE, and that the token can write "
                        f"to {repo_id}, then rerun `dvc repro publish` (or `hf upload {repo_id} {folder}`)") from None
    return str(getattr(info, "commit_url", info))
