"""Random-init Gemma 3 models and local tokenizers for the tests, the offline demo and the benchmarks.

Real weights cannot be downloaded on every machine, so the project tests on models it builds itself:
the `tiny` preset (CPU tests, the demo), `small` (benchmarks/learnability.py) and Gemma 3 1B's exact
shape (speed and memory at 1B). No pipeline stage imports this module.
"""

from pathlib import Path

import torch

from mcgrpo.modeling import CHAT_TEMPLATE, END_OF_TURN

# Gemma 3 1B's exact text config (google/gemma-3-1b-it), and a tiny one for CPU tests and the demo.
PRESETS = {
    "gemma-3-1b": dict(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                       query_pre_attn_scalar=256, max_position_embeddings=32768),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, sliding_window=128, query_pre_attn_scalar=32,
                 max_position_embeddings=4096),
    # for benchmarks/learnability.py: room for the copy task the tiny model did not learn
    "small": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=32, sliding_window=128, query_pre_attn_scalar=32,
                  max_position_embeddings=4096),
}





def build_tokenizer(corpus: list[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer with Gemma's special tokens and chat template, trained locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", END_OF_TURN]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", END_OF_TURN], chat_template=CHAT_TEMPLATE,
        padding_side="left", model_max_length=PRESETS["tiny"]["max_position_embeddings"])


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text that covers the prompts and answers the pipeline produces, for training the tokenizer."""
    from mcgrpo.data.synthetic import make_synthetic_mc
    from mcgrpo.prompts import INSTRUCTIONS, format_question

    items = make_synthetic_mc(400, seed=seed)
    answers = [f"<reasoning>The passage says {i['options'][0]}.</reasoning><answer>{i['answer']}</answer>" for i in items]
    return list(INSTRUCTIONS.values()) * 20 + [format_question(i) for i in items] + answers


def question_texts(records: list[dict]) -> list[str]:
    """Every passage once (RACE asks several questions per passage), then each question with its options:
    text to train a benchmark tokenizer on (build_tiny_model's tokenizer_texts)."""
    return list(dict.fromkeys(r["context"] for r in records)) + [r["question"] + "\n" + "\n".join(r["options"])
                                                                for r in records]


def build_model(preset: str = "tiny", vocab_size: int | None = None, seed: int = 0, dtype=torch.float32,
                attn_implementation: str | None = None):
    """A random-init Gemma3ForCausalLM at `preset`'s shape (gemma-3-1b: Gemma 3 1B's exact config)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(**{**PRESETS[preset], **({"vocab_size": vocab_size} if vocab_size else {}),
                                 **({"attn_implementation": attn_implementation} if attn_implementation else {}),
                                 "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2})
    return Gemma3ForCausalLM(config).to(dtype)


def warm_start(model, tokenizer, steps: int, seed: int = 0, batch_size: int = 16, items=None) -> float:
    """A short supervised warm start on synthetic questions, so a random-init model answers in format.

    A random model never writes <answer>X</answer>, so every GRPO reward is 0 and nothing is learnt.
    After this (about 40 s for 200 steps on 2 CPU cores) the tiny model answers in format, with
    accuracy near chance: GRPO then has reward differences to work with. `items` replaces the
    synthetic questions (benchmarks/learnability.py warm-starts on its own task). Returns the last loss.
    """
    import random

    from mcgrpo.data.synthetic import make_synthetic_mc
    from mcgrpo.prompts import render_prompt

    rng = random.Random(seed)
    examples = []
    for item in items or make_synthetic_mc(600, seed=seed + 1000):  # other seeds than the demo data
        variant = rng.choice(["cot", "direct"])
        truth = item["options"]["ABCDEFGHIJ".index(item["answer"])]
        answer = (f"<reasoning>The passage says {truth}.</reasoning><answer>{item['answer']}</answer>"
                  if variant == "cot" else item["answer"])
        examples.append((tokenizer(render_prompt(tokenizer, item, variant), add_special_tokens=False)["input_ids"],
                         tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = rng.sample(examples, batch_size)
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)  # loss on the answer only
        mask = torch.zeros(batch_size, width, dtype=torch.long)
        for i, (p, c) in enumerate(batch):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
            mask[i, :len(p) + len(c)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


def build_tiny_model(out_dir, preset: str = "tiny", seed: int = 0, warm_start_steps: int = 0,
                     warm_start_items=None, tokenizer_texts: list[str] | None = None, tokenizer_vocab: int = 2048,
                     tokenizer_file=None) -> Path:
    """Write a Gemma3ForCausalLM (random init, optionally warm-started) and its local tokenizer to out_dir.

    tokenizer_texts: more text to train the tokenizer on, with a larger tokenizer_vocab. The default
    (2,048 allowed, 644 learnt from the synthetic corpus) splits RACE passages into 3.5 tokens per word,
    where a 32,000-token BPE trained on RACE passages gives 1.26: benchmarks/real_scale.py uses the latter,
    so benchmark prompts are as long as a full-size tokenizer would make them.
    tokenizer_file: the official Gemma 3 tokenizer.json instead (the benchmarks' 1B shape: real prompt lengths).
    """
    out_dir = Path(out_dir)
    if tokenizer_file:
        from mcgrpo.gguf_import import official_tokenizer

        tokenizer = official_tokenizer(tokenizer_file)
        tokenizer.chat_template = CHAT_TEMPLATE
    else:
        tokenizer = build_tokenizer(tokenizer_corpus(seed) + list(tokenizer_texts or []), vocab_size=tokenizer_vocab)
    # The 1B preset keeps Gemma's 262,144-token vocabulary (the real compute and memory); ids the small
    # tokenizer lacks decode to nothing. It is saved in bf16, as the real checkpoint is.
    # Gemma's own tokenizer: Gemma's 262,144-entry embedding (its one added image token is never generated)
    vocab = None if preset == "gemma-3-1b" else PRESETS["gemma-3-1b"]["vocab_size"] if tokenizer_file else len(tokenizer)
    dtype = torch.bfloat16 if preset == "gemma-3-1b" else torch.float32
    model = build_model(preset, vocab_size=vocab, seed=seed, dtype=dtype)
    if warm_start_steps:
        warm_start(model, tokenizer, warm_start_steps, seed, items=warm_start_items)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, eot]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    from mcgrpo.fileio import atomic_path

    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
