"""prepare: load the dataset, drop prompts that are too long, sample train/eval by seed, describe them."""

from mcgrpo import paths
from mcgrpo.data import dataset_stats, load_splits
from mcgrpo.data.loaders import pick_shots, sample_splits
from mcgrpo.errors import run_stage
from mcgrpo.fileio import write_json, write_jsonl
from mcgrpo.modeling import load_tokenizer
from mcgrpo.params import load_params
from mcgrpo.prompts import VARIANTS, is_chat, render_prompt


def main():
    p = load_params()
    tokenizer = load_tokenizer(p.model)
    # Every variant this tokenizer can render (a pretrained model's has no chat template: completion variants only).
    variants = [v for v in VARIANTS if not is_chat(v) or getattr(tokenizer, "chat_template", None)]

    def n_tokens(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    shots, splits = pick_shots(load_splits(p.prepare), p.prepare.n_shots, p.prepare.seed)
    prompt_tokens = {}

    def fits(record):
        # The longest variant decides, so every kept question fits under every prompt variant.
        prompt_tokens[id(record)] = max(n_tokens(render_prompt(tokenizer, record, v, shots)) for v in variants)
        return prompt_tokens[id(record)] <= p.prepare.max_prompt_tokens

    splits, dropped = sample_splits(splits, p.prepare.n_train, p.prepare.n_eval, p.prepare.seed, fits)
    lengths = {role: {"context": [n_tokens(r["context"]) for r in records],
                      "prompt": [prompt_tokens[id(r)] for r in records]} for role, records in splits.items()}
    stats = dataset_stats(splits, lengths, dropped, p.prepare.max_prompt_tokens)
    stats["n_shots"] = len(shots)
    write_jsonl(paths.TRAIN_SET, splits["train"])
    write_jsonl(paths.EVAL_SET, splits["eval"])
    write_jsonl(paths.SHOTS, shots)
    write_json(paths.DATA_STATS, stats)
    for role in ("train", "eval"):
        print(f"{role}: {stats[role]['n']} questions, {dropped[role]} dropped as longer than "
              f"{p.prepare.max_prompt_tokens} tokens, sources {stats[role]['by_source']}")
    if shots:
        print(f"{len(shots)} solved train questions shown before each completion-variant question")


if __name__ == "__main__":
    run_stage(main)
