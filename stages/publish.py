"""publish: models/publish/ = the LoRA adapter (or the merged model) + a model card; uploaded to the
Hub in one commit when publish.push is true. The token is checked before anything is built."""

from mcgrpo import paths
from mcgrpo.errors import run_stage
from mcgrpo.fileio import read_json, read_jsonl
from mcgrpo.metrics import read_metrics
from mcgrpo.params import load_params
from mcgrpo.publish import build_folder, card_text, hub_token, pick_example, push


def main():
    p = load_params()
    pub = p.publish
    token = hub_token() if pub.push else None  # fail before any work when the upload could not happen
    card = card_text(p, comparison=read_metrics(paths.COMPARISON), tuned_metrics=read_metrics(paths.FINETUNED_METRICS),
                     train_metrics=read_json(paths.TRAIN_METRICS), merged=pub.merge, repo_id=pub.repo_id,
                     example=pick_example(read_jsonl(paths.EVAL_SET), read_jsonl(paths.FINETUNED_PREDICTIONS),
                                          p.train.variant))
    model = tokenizer = None
    if pub.merge:
        from mcgrpo.modeling import load_model

        model, tokenizer, _ = load_model(p.model, adapter_dir=paths.ADAPTER)  # merged for inference
    build_folder(paths.PUBLISH, card, adapter_dir=paths.ADAPTER, merged_model=model, tokenizer=tokenizer)
    what = "merged model" if pub.merge else "adapter"
    print(f"wrote {paths.PUBLISH}/ ({what} + model card)")
    if pub.push:
        url = push(paths.PUBLISH, pub.repo_id, private=pub.private, commit_message=pub.commit_message, token=token)
        print(f"uploaded to https://huggingface.co/{pub.repo_id} ({url})")
    else:
        print("publish.push is false: nothing uploaded (dvc exp run -S publish.push=true -S publish.repo_id=you/name)")


if __name__ == "__main__":
    run_stage(main)
