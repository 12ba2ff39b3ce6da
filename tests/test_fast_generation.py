"""StaticGenerator must produce exactly what `model.generate` produces (greedy), batch for batch."""

import pytest
import torch

from mcgrpo.fast_generation import StaticGenerator
from mcgrpo.modeling import load_model


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_params):
    model, tok, _ = load_model(tiny_model_params)
    return model, tok


def hf_greedy(model, enc, max_new_tokens, eos, pad):
    """The reference: model.generate with HF's own sdpa attention (a StaticGenerator switches the model to its
    grouped attention, so without this the reference would share the code under test)."""
    attention = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, eos_token_id=eos,
                             pad_token_id=pad)
    finally:
        model.set_attn_implementation(attention)
    return out[:, enc["input_ids"].shape[1]:]


def test_greedy_equals_hf_generate_on_an_unpadded_batch(model_and_tokenizer):
    """No row padded: HF then leaves the prefill's causal mask out, while the static cache's keys run past the
    prompt; the grouped attention once aligned its own causal mask to the cache's end and got this wrong."""
    model, tok = model_and_tokenizer
    ids = torch.randint(5, len(tok), (3, 40), generator=torch.Generator().manual_seed(0))
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    reference = hf_greedy(model, enc, 20, [], tok.pad_token_id)
    generator = StaticGenerator(model, batch_size=3, max_length=40 + 20)
    ours = generator.generate(ids, enc["attention_mask"], max_new_tokens=20, eos_token_ids=[],
                              pad_token_id=tok.pad_token_id)
    assert torch.equal(ours, reference)


def test_greedy_equals_hf_generate_on_padded_batches_and_early_stops(model_and_tokenizer):
    model, tok = model_and_tokenizer
    # lengths from 3 to ~200 tokens: left padding, and prompts longer than the tiny model's 128-token
    # sliding window (its local layers must mask exactly as HF does)
    prompts = ["a b c", "the passage says " * 40, "question: " * 70 + "answer", "Anna lives in Lima."]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    generator = StaticGenerator(model, batch_size=6, max_length=enc["input_ids"].shape[1] + 40, check_every=4)
    pad = tok.pad_token_id
    free_run = hf_greedy(model, enc, 30, [], pad)
    ours = generator.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=30, eos_token_ids=[],
                              pad_token_id=pad)
    assert torch.equal(ours, free_run)
    # Make a token the model does produce an end-of-sequence: rows stop at different steps and are padded.
    eos = [int(free_run[0, 5]), int(free_run[3, 2])]
    reference = hf_greedy(model, enc, 30, eos, pad)
    ours = generator.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=30, eos_token_ids=eos,
                              pad_token_id=pad)
    assert torch.equal(ours[:, :reference.shape[1]], reference)
    assert (ours[:, reference.shape[1]:] == pad).all()  # we may run a few steps longer: only padding there
    # The generator is reused for a different, smaller batch (the cache is reset between calls).
    enc2 = tok(prompts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    assert torch.equal(generator.generate(enc2["input_ids"], enc2["attention_mask"], max_new_tokens=12,
                                          eos_token_ids=[], pad_token_id=pad), hf_greedy(model, enc2, 12, [], pad))


def test_sampling_is_seeded_and_stays_in_vocabulary(model_and_tokenizer):
    model, tok = model_and_tokenizer
    enc = tok(["a b c", "Anna lives in Lima."], return_tensors="pt", padding=True, add_special_tokens=False)
    generator = StaticGenerator(model, batch_size=2, max_length=enc["input_ids"].shape[1] + 16)

    def sample(seed):
        return generator.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=16, eos_token_ids=[],
                                  pad_token_id=tok.pad_token_id, temperature=1.0,
                                  generator=torch.Generator().manual_seed(seed))

    a, b, c = sample(0), sample(0), sample(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= int(a.min()) and int(a.max()) < model.config.vocab_size


def test_too_big_a_batch_is_refused(model_and_tokenizer):
    model, tok = model_and_tokenizer
    generator = StaticGenerator(model, batch_size=1, max_length=8)
    with pytest.raises(ValueError, match="exceeds the generator's 1 x 8"):
        generator.generate(torch.ones((2, 4), dtype=torch.long), torch.ones((2, 4), dtype=torch.long),
                           max_new_tokens=2, eos_token_ids=[], pad_token_id=0)


def test_the_eval_helper_gives_the_same_answers_with_either_engine(model_and_tokenizer, records):
    from mcgrpo.generation import generate
    from mcgrpo.prompts import render_prompt

    model, tok = model_and_tokenizer
    prompts = [render_prompt(tok, r, "cot") for r in records]
    hf = generate(model, tok, prompts, batch_size=4, max_new_tokens=12, engine="hf")
    static = generate(model, tok, prompts, batch_size=4, max_new_tokens=12, engine="fast")
    assert hf == static


def test_one_generator_serves_every_prompt_variant(model_and_tokenizer, records, monkeypatch):
    """Compile time is paid once per stage run: baseline/evaluate build one StaticGenerator for all variants,
    and its answers are those of the hf engine."""
    from mcgrpo import fast_generation
    from mcgrpo.evaluation import answer_eval_set
    from mcgrpo.params import EvalParams

    model, tok = model_and_tokenizer
    built = []
    original = fast_generation.StaticGenerator.__init__

    def counting_init(self, *args, **kwargs):
        built.append(kwargs["max_length"])
        original(self, *args, **kwargs)

    monkeypatch.setattr(fast_generation.StaticGenerator, "__init__", counting_init)
    settings = dict(mode="generate", variants=["direct", "cot"], batch_size=4, max_new_tokens=8)
    static = answer_eval_set(model, tok, records, EvalParams(engine="fast", **settings), "base")
    hf = answer_eval_set(model, tok, records, EvalParams(engine="hf", **settings), "base")
    assert len(built) == 1
    assert [r["completion"] for r in static] == [r["completion"] for r in hf]


def ring_test_model(layer_types=("sliding_attention", "full_attention", "sliding_attention")):
    """A float32 Gemma (3 layers: sliding, full, sliding) with a window of 8 and sharpened attention (a random-init
    model attends almost uniformly and would not notice a wrong slot), and a left-padded batch of 3, 12 and 25
    tokens."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from mcgrpo.tiny import PRESETS

    torch.manual_seed(0)
    config = Gemma3TextConfig(**{**PRESETS["tiny"], "num_hidden_layers": len(layer_types), "sliding_window": 8,
                                 "vocab_size": 300, "layer_types": list(layer_types)},
                              pad_token_id=0, attn_implementation="sdpa")
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.fill_(3.0)
            layer.self_attn.k_norm.weight.fill_(3.0)
            layer.self_attn.v_proj.weight.mul_(10)
    ids = torch.zeros((3, 25), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate([3, 12, 25]):
        ids[row, 25 - n:] = torch.randint(5, 300, (n,))
        mask[row, 25 - n:] = 1
    return model, ids, mask


def test_sliding_window_ring_cache_equals_hf_generate_through_many_wraps():
    """Sliding-window layers keep a ring of `window` slots. With a window of 8, prompts of 3 to 25 tokens and
    30 new tokens, the ring wraps many times, in the prefill and while decoding; a full-attention layer between
    two sliding ones reads the full-length cache."""
    model, ids, mask = ring_test_model()
    enc = {"input_ids": ids, "attention_mask": mask}
    reference = hf_greedy(model, enc, 30, [], 0)
    generator = StaticGenerator(model, batch_size=4, max_length=25 + 30)
    assert [layer.slots for layer in generator.cache.layers] == [8, 55, 8]
    ours = generator.generate(ids, mask, max_new_tokens=30, eos_token_ids=[], pad_token_id=0)
    assert torch.equal(ours, reference)
    # the window matters here: the same model with a window longer than everything answers differently
    model.config.sliding_window = 4096
    for layer in model.model.layers:
        layer.self_attn.sliding_window = 4096 if layer.self_attn.sliding_window else None
    assert not torch.equal(hf_greedy(model, enc, 30, [], 0), reference)


def test_a_sliding_window_without_layer_types_is_refused():
    from types import SimpleNamespace

    config = SimpleNamespace(num_hidden_layers=2, sliding_window=16, num_attention_heads=2, num_key_value_heads=2)
    model = SimpleNamespace(config=config)
    with pytest.raises(ValueError, match="sliding window .16. without per-layer layer_types.*hf engine"):
        StaticGenerator(model, batch_size=1, max_length=64)


def test_compiled_layers_equal_hf_and_compile_once_per_layer_kind():
    """Regional compilation: every decoder layer runs through one compiled function, so a model with two layer
    kinds compiles two graphs however many layers it has (the whole step as one graph took ~75 s at the 1B
    shape). Compiled on CPU here (inductor's C++ backend); the GPU tests add CUDA graphs."""
    from torch._dynamo.utils import counters

    model, ids, mask = ring_test_model(["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"])
    enc = {"input_ids": ids, "attention_mask": mask}
    reference = hf_greedy(model, enc, 12, [], 0)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    generator = StaticGenerator(model, batch_size=3, max_length=25 + 12, compile=True)
    assert torch.equal(generator.generate(ids, mask, max_new_tokens=12, eos_token_ids=[], pad_token_id=0), reference)
    assert counters["stats"]["unique_graphs"] - before == 2
    # the prefill through compiled layers too (dynamic shapes), for two prompt lengths
    generator = StaticGenerator(model, batch_size=3, max_length=25 + 12, compile=True, compile_prefill=True)
    assert torch.equal(generator.generate(ids, mask, max_new_tokens=12, eos_token_ids=[], pad_token_id=0), reference)
    short = {"input_ids": ids[:, 5:], "attention_mask": mask[:, 5:]}
    assert torch.equal(generator.generate(short["input_ids"], short["attention_mask"], max_new_tokens=12,
                                          eos_token_ids=[], pad_token_id=0), hf_greedy(model, short, 12, [], 0))
    assert not hasattr(model.model.layers[0], "forward") or "forward" not in vars(model.model.layers[0])


def test_the_generator_runs_its_attention_within_its_own_calls_only(monkeypatch):
    """The grouped attention serves the generator's prefill and decode steps, and the model is back on its own
    attention after each call: a policy's training forward keeps what train.grouped_attention gave it."""
    import mcgrpo.fast_generation as fast_generation

    model, ids, mask = ring_test_model()
    reference = hf_greedy(model, {"input_ids": ids, "attention_mask": mask}, 12, [], 0)
    query_lengths, plain = [], fast_generation.grouped_attention
    monkeypatch.setattr(fast_generation, "grouped_attention",
                        lambda module, query, *a, **k: query_lengths.append(query.shape[2]) or plain(module, query, *a, **k))
    generator = StaticGenerator(model, batch_size=3, max_length=25 + 12, compile=False)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(generator.generate(ids, mask, max_new_tokens=12, eos_token_ids=[], pad_token_id=0), reference)
    assert model.config._attn_implementation == "sdpa"
    layers = len(model.model.layers)
    assert query_lengths == [25] * layers + [1] * (11 * layers)  # the prefill, then 11 decode steps


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_flex_decode_attention_equals_hf_through_the_ring(device):
    """decode_attention="flex": FlexAttention for the decode steps (compiled; its mask a score_mod over the ring
    cache's slots) gives HF's greedy tokens on a padded batch that wraps the sliding window many times."""
    model, ids, mask = ring_test_model()
    model, ids, mask = model.to(device), ids.to(device), mask.to(device)
    reference = hf_greedy(model, {"input_ids": ids, "attention_mask": mask}, 20, [], 0)
    torch._dynamo.reset()
    generator = StaticGenerator(model, batch_size=3, max_length=25 + 20, compile=True, decode_attention="flex")
    assert generator._attention == "mcgrpo_grouped_flex_attention"
    assert torch.equal(generator.generate(ids, mask, max_new_tokens=20, eos_token_ids=[], pad_token_id=0), reference)
    assert model.config._attn_implementation == "sdpa"  # the generator's attention is for its own calls only
    with pytest.raises(ValueError, match="decode_attention='paged': matmul or flex"):
        StaticGenerator(model, batch_size=3, max_length=45, decode_attention="paged")


@pytest.mark.parametrize("device,compile", [("cpu", False), pytest.param("cuda", True, marks=pytest.mark.gpu)])
def test_repeated_prompts_are_prefilled_once_and_equal_hf_generate(device, compile):
    """GRPO's rollouts hold num_generations copies of each prompt: the prefill runs each distinct prompt once and
    spreads its K/V to every row that repeats it (through the sliding ring and the full cache), with HF's greedy
    tokens on the whole batch; sampled copies still draw apart. On CUDA: compiled layers, a compiled prefill and
    CUDA graphs."""
    from mcgrpo.fast_generation import distinct_rows

    model, ids, mask = ring_test_model()
    order = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    ids, mask = ids[order].to(device), mask[order].to(device)
    model = model.to(device)
    first, spread = distinct_rows(ids, mask)
    assert torch.equal(ids[first][spread], ids) and sorted(first.tolist()) == [0, 1, 2]
    assert distinct_rows(ids[:3], mask[:3]) == (None, None)
    reference = hf_greedy(model, {"input_ids": ids, "attention_mask": mask}, 20, [], 0)
    torch._dynamo.reset()
    generator = StaticGenerator(model, batch_size=8, max_length=25 + 20, compile=compile, compile_prefill=compile)
    prefill_rows = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda module, args, out: prefill_rows.append(args[0].shape[0]) if args[0].shape[1] > 1 else None)
    assert torch.equal(generator.generate(ids, mask, max_new_tokens=20, eos_token_ids=[], pad_token_id=0), reference)
    hook.remove()
    assert prefill_rows == [4]  # 3 distinct prompts and the one distinct padding row of the 8-row batch
    sampled = generator.generate(ids, mask, max_new_tokens=20, eos_token_ids=[], pad_token_id=0, temperature=1.0,
                                 generator=torch.Generator(device).manual_seed(0))
    assert not torch.equal(sampled[0], sampled[3]) and not torch.equal(sampled[1], sampled[6])


def test_prompts_are_tokenized_once_and_left_padded(model_and_tokenizer, records, monkeypatch):
    """generate takes texts or their ids (the eval stage tokenizes each variant once for the generator's size and
    every batch); both give the same answers, and ids are left-padded."""
    from mcgrpo.generation import encode_prompts, generate, left_pad
    from mcgrpo.prompts import render_prompt

    model, tok = model_and_tokenizer
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0, multiple=4)  # train.pad_to_multiple_of's rollouts
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert left_pad([[5, 6, 7, 8]], pad_token_id=0, multiple=4)[0].tolist() == [[5, 6, 7, 8]]
    texts = [render_prompt(tok, r, "direct") for r in records]
    encoded = encode_prompts(tok, texts)
    assert encoded[0] == tok(texts[0], add_special_tokens=False)["input_ids"] and encode_prompts(tok, encoded) == encoded
    calls = []
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: calls.append(a) or pytest.fail("re-tokenized"))
    from_ids = generate(model, tok, encoded, batch_size=4, max_new_tokens=6, engine="fast")
    monkeypatch.undo()
    assert from_ids == generate(model, tok, texts, batch_size=4, max_new_tokens=6, engine="fast") and not calls


def lora_ring_model():
    """ring_test_model with LoRA (r 4) on every projection, its B matrices random so that the adapters change the
    answers (peft starts B at zero)."""
    from peft import LoraConfig, get_peft_model

    model, ids, mask = ring_test_model()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model, ids, mask


@pytest.mark.parametrize("compile,device", [(False, "cpu"), (True, "cpu"),
                                            pytest.param(True, "cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("fuse", [True, False])
def test_merged_lora_twins_equal_the_peft_model_and_follow_its_updates(compile, device, fuse):
    """The generator runs LoRA layers as twins over merged weights (base + delta, refreshed every call), fused or
    not: greedy output equals the peft model's own generate, before and after an in-place change of the adapters
    (what an optimizer step does between rollouts), and with the adapters disabled. The original layers keep their
    LoRA. On CUDA the decode step is a CUDA graph: the refreshed buffers must be what its replays read."""
    from peft.tuners.lora import Linear as LoraLinear

    from mcgrpo.fast_generation import FusedGemma3Attention, FusedGemma3MLP

    model, ids, mask = lora_ring_model()
    model, ids, mask = model.to(device), ids.to(device), mask.to(device)
    enc = {"input_ids": ids, "attention_mask": mask}
    with model.disable_adapter():
        base_reference = hf_greedy(model, enc, 20, [], 0)
    reference = hf_greedy(model, enc, 20, [], 0)
    assert not torch.equal(reference, base_reference)  # the adapters matter
    torch._dynamo.reset()
    generator = StaticGenerator(model, batch_size=3, max_length=25 + 20, compile=compile, fuse_projections=fuse)
    assert all(isinstance(layer.self_attn.q_proj, LoraLinear) for layer in model.base_model.model.model.layers)
    if fuse:  # per layer: q/k/v, o, gate/up, down
        assert [len(sources) for _, sources in generator._merged] == [3, 1, 2, 1] * 3
        assert all(type(twin.self_attn) is FusedGemma3Attention and type(twin.mlp) is FusedGemma3MLP
                   and type(twin.self_attn.o_proj) is torch.nn.Linear for twin in generator._run_layers)
    else:
        assert len(generator._merged) == 3 * 7
        assert all(type(twin.self_attn.q_proj) is torch.nn.Linear for twin in generator._run_layers)
    run = lambda: generator.generate(ids, mask, max_new_tokens=20, eos_token_ids=[], pad_token_id=0)  # noqa: E731
    assert torch.equal(run(), reference)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.mul_(-1.5)
    updated = hf_greedy(model, enc, 20, [], 0)
    assert not torch.equal(updated, reference)
    assert torch.equal(run(), updated)
    with model.disable_adapter():
        assert torch.equal(run(), base_reference)
    # without merging the generator reads the LoRA layers themselves (nothing to fuse: q/k/v carry LoRA)
    unmerged = StaticGenerator(model, batch_size=3, max_length=25 + 20, compile=compile, merge_lora=False)
    assert unmerged._merged == [] and unmerged._run_layers == unmerged._decoder_layers
    assert torch.equal(unmerged.generate(ids, mask, max_new_tokens=20, eos_token_ids=[], pad_token_id=0), updated)


def test_a_model_without_lora_runs_fused_twins_or_its_own_layers(model_and_tokenizer):
    """Without LoRA the twins only fuse (q/k/v and gate/up stacked from the model's weights; o and down are the
    model's own); with fusion off the generator runs the model's layers."""
    model, _ = model_and_tokenizer
    generator = StaticGenerator(model, batch_size=2, max_length=32)
    generator.generate(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), max_new_tokens=2,
                       eos_token_ids=[], pad_token_id=0)  # fills the buffers
    layer, twin = generator._decoder_layers[0], generator._run_layers[0]
    assert twin.self_attn.o_proj is layer.self_attn.o_proj and twin.mlp.down_proj is layer.mlp.down_proj
    attention = layer.self_attn
    assert torch.equal(twin.self_attn.qkv, torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                                      attention.v_proj.weight]))
    assert torch.equal(twin.mlp.gate_up, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]))
    plain = StaticGenerator(model, batch_size=2, max_length=32, fuse_projections=False)
    assert plain._merged == [] and plain._run_layers == plain._decoder_layers


@pytest.mark.parametrize("kind", ["sliding_attention", "full_attention"])
def test_a_fused_layer_equals_the_model_layer(kind):
    """One decoder layer's twin against the layer itself on the same input (float32, a padded prefill and one
    decode step): the fused matmuls are the same arithmetic as the separate ones, to float32 rounding."""
    from mcgrpo.fast_generation import DecodeCache, merged_twin, refresh_merged

    model, ids, mask = ring_test_model([kind, kind])
    merged = []
    layer = model.model.layers[0]
    twin = merged_twin(layer, merged, fuse=True)
    refresh_merged(merged)
    assert twin is not layer and len(merged) == 2
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, model.config.hidden_size)
    positions = torch.arange(7).expand(3, 7)
    embeddings = model.model.rotary_emb(hidden, positions, kind)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(3, 1, 7, 7)
    outs = []
    for module in (layer, twin):
        cache = DecodeCache(model.config, 3, 16, torch.float32, "cpu", torch.zeros(1, dtype=torch.long))
        outs.append(type(layer).forward(module, hidden, position_embeddings=embeddings, attention_mask=causal,
                                        position_ids=positions, past_key_values=cache.layers[0]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(outs[0], torch.zeros_like(outs[0]))
