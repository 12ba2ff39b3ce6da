"""GPU-only checks: collected everywhere, skipped with a visible reason on CPU machines (see conftest)."""

import importlib.util

import pytest
import torch

from mcgrpo.modeling import load_model, pick_backend
from mcgrpo.params import ModelParams

pytestmark = pytest.mark.gpu


def test_auto_backend_is_unsloth_when_installed():
    expected = "unsloth" if importlib.util.find_spec("unsloth") else "transformers"
    assert pick_backend("auto") == expected


def test_model_loads_on_cuda_in_bf16(tiny_model_dir):
    import torch

    model, _, _ = load_model(ModelParams(name=str(tiny_model_dir), backend="transformers"))
    param = next(model.parameters())
    assert param.is_cuda and param.dtype == torch.bfloat16


def test_tf32_param_puts_float32_matmuls_on_tensor_cores(tiny_model_dir):
    """model.tf32 is in effect on the GPU: a float32 matmul's error against float64 grows to TF32's (10-bit
    mantissa inputs: ~3e-4 of the largest entry here) and goes back to fp32's (~1e-7) with tf32 off."""
    a, b = torch.randn(2, 2048, 2048, device="cuda", dtype=torch.float64)
    exact = a @ b

    def error():
        return ((a.float() @ b.float()).double() - exact).abs().max().item() / exact.abs().max().item()
    try:
        load_model(ModelParams(name=str(tiny_model_dir), backend="transformers", dtype="float32", tf32=True))
        tf32_error = error()
        load_model(ModelParams(name=str(tiny_model_dir), backend="transformers", dtype="float32"))
        fp32_error = error()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert fp32_error < 1e-5 and tf32_error > 100 * fp32_error, (fp32_error, tf32_error)


@pytest.mark.skipif(not importlib.util.find_spec("unsloth"), reason="unsloth not installed (make gpu)")
def test_unsloth_backend_adds_lora(tiny_model_dir):
    from mcgrpo.params import LoraParams

    model, tok, peft_config = load_model(ModelParams(name=str(tiny_model_dir), backend="unsloth"), lora=LoraParams(r=4))
    assert peft_config is None and hasattr(model, "peft_config")  # Unsloth applied LoRA itself


@pytest.mark.gpu
def test_compiled_static_generator_matches_hf_generate_on_cuda(tiny_model_dir):
    from mcgrpo.fast_generation import StaticGenerator

    model, tok, _ = load_model(ModelParams(name=str(tiny_model_dir), backend="transformers", dtype="float32"))
    prompts = ["a b c", "the passage says " * 40, "question: " * 70 + "answer", "Anna lives in Lima."]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
    eos = model.generation_config.eos_token_id
    reference = model.generate(**enc, max_new_tokens=24, do_sample=False, top_k=None,
                               pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
    generator = StaticGenerator(model, batch_size=4, max_length=enc["input_ids"].shape[1] + 24)  # compiled on CUDA
    for _ in range(2):  # the second call replays the captured graph
        ours = generator.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=24, eos_token_ids=eos,
                                  pad_token_id=tok.pad_token_id)
        assert torch.equal(ours[:, :reference.shape[1]], reference)


@pytest.mark.gpu
def test_eval_helper_static_engine_matches_hf_on_cuda(tiny_model_dir, records):
    from mcgrpo.generation import generate
    from mcgrpo.prompts import render_prompt

    model, tok, _ = load_model(ModelParams(name=str(tiny_model_dir), backend="transformers", dtype="float32"))
    prompts = [render_prompt(tok, r, "cot") for r in records]
    hf = generate(model, tok, prompts, batch_size=4, max_new_tokens=16, engine="hf")
    assert generate(model, tok, prompts, batch_size=4, max_new_tokens=16, engine="fast") == hf  # compiled path


def test_fast_rollouts_compile_once_across_grpo_steps(tiny_model_dir, tmp_path):
    """Training updates the LoRA weights in place between rollouts: the CUDA graph must be replayed with them,
    not recompiled every step (a recompile costs the whole warm-up again)."""
    from torch._dynamo.utils import counters

    from mcgrpo.data.synthetic import make_synthetic_mc
    from mcgrpo.fileio import write_jsonl
    from mcgrpo.params import TrainParams
    from mcgrpo.training import run_fingerprint, train_grpo

    records = make_synthetic_mc(8, seed=2)
    write_jsonl(tmp_path / "train.jsonl", records)
    mp = ModelParams(name=str(tiny_model_dir), backend="transformers")
    tp = TrainParams(max_steps=4, save_steps=100, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                     num_generations=2, max_completion_length=16, warmup_steps=0, learning_rate=1e-3,
                     lora={"r": 4, "alpha": 8}, rollout_engine="fast", beta=0.0, compile_layers=False)
    model, tok, peft_config = load_model(mp, lora=tp.lora, seed=tp.seed)
    torch._dynamo.reset()
    counters.clear()
    summary = train_grpo(model, tok, peft_config, records, tp, checkpoints=tmp_path / "ckpt", adapter_out=tmp_path / "a",
                         live_dir=tmp_path / "live", fingerprint=run_fingerprint(tp, mp, tmp_path / "train.jsonl"),
                         bf16=True, engine="fast")
    assert summary["steps"] == 4
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compiled_decoder_layers_train_as_eager_on_cuda(tiny_model_dir):
    """Inductor's kernels for the checkpointed LoRA training forward and backward, in float32, against eager."""
    from test_training import check_compiled_layers_train_as_eager

    check_compiled_layers_train_as_eager(ModelParams(name=str(tiny_model_dir), backend="transformers",
                                                     dtype="float32"), "cuda", "inductor", 1e-4)


def test_grpo_with_compiled_layers_stops_compiling_after_warmup(tiny_model_dir, tmp_path):
    """train.compile_layers (auto: on here) through real GRPO steps with the fast rollouts, the reference model's
    pass (beta > 0) and gradient checkpointing: batches of new lengths reuse the graphs (dynamic shapes), so no step
    after the second compiles anything."""
    from torch._dynamo.utils import counters
    from transformers import TrainerCallback

    from mcgrpo.data.synthetic import make_synthetic_mc
    from mcgrpo.fileio import write_jsonl
    from mcgrpo.params import TrainParams
    from mcgrpo.patches import transformers_model
    from mcgrpo.training import run_fingerprint, train_grpo

    records = make_synthetic_mc(16, seed=3)
    write_jsonl(tmp_path / "train.jsonl", records)
    mp = ModelParams(name=str(tiny_model_dir), backend="transformers")
    tp = TrainParams(max_steps=6, save_steps=100, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                     num_generations=2, max_completion_length=16, warmup_steps=0, learning_rate=1e-3,
                     lora={"r": 4, "alpha": 8}, rollout_engine="fast", gradient_checkpointing=True)
    graphs = []

    class CountGraphs(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            graphs.append(counters["stats"]["unique_graphs"])

    model, tok, peft_config = load_model(mp, lora=tp.lora, seed=tp.seed)
    torch._dynamo.reset()
    counters.clear()
    summary = train_grpo(model, tok, peft_config, records, tp, checkpoints=tmp_path / "ckpt",
                         adapter_out=tmp_path / "a", live_dir=tmp_path / "live",
                         fingerprint=run_fingerprint(tp, mp, tmp_path / "train.jsonl"), bf16=True, engine="fast",
                         callbacks=(CountGraphs(),))
    assert summary["steps"] == 6 and len(graphs) == 6
    layers = transformers_model(model).get_decoder().layers
    assert all("forward" in vars(layer) for layer in layers)  # the layers did run compiled
    assert graphs[1] > 1 and graphs[-1] == graphs[1], graphs


def test_decode_loop_never_waits_for_the_gpu(tiny_model_dir):
    """The host must queue token after token without waiting: a blocking copy per token (it was one, a
    `torch.tensor([slot], device=...)`) made every step cost kernel time plus host time. Syncs per call
    (setup, prefill) are fine; their number must not grow with the number of tokens."""
    import warnings

    from mcgrpo.fast_generation import StaticGenerator

    model, tok, _ = load_model(ModelParams(name=str(tiny_model_dir), backend="transformers"))
    # 32 rows and 2 EOS ids: enough for torch.isin to take its sorting path, which syncs (it did, per token)
    ids = torch.randint(10, 100, (32, 32), device="cuda")
    generator = StaticGenerator(model, batch_size=32, max_length=32 + 64, check_every=1000)
    generator.generate(ids, torch.ones_like(ids), max_new_tokens=64, eos_token_ids=[1, 2], pad_token_id=0)  # compile

    def syncs(new_tokens):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                generator.generate(ids, torch.ones_like(ids), max_new_tokens=new_tokens, eos_token_ids=[1, 2],
                                   pad_token_id=0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(8) == syncs(64)


def test_fast_rollouts_follow_the_policy_through_the_cuda_graph(tiny_model_dir, tmp_path):
    from test_training import check_fast_rollouts_follow_the_policy

    check_fast_rollouts_follow_the_policy(ModelParams(name=str(tiny_model_dir), backend="transformers",
                                                      dtype="float32"), tmp_path)


@pytest.mark.gpu
def test_generation_agrees_with_the_forward_past_the_sliding_window_on_cuda():
    """On an H200, SDPA `generate` on a left-padded Gemma 3 batch padded to 513 tokens (past the 512-token window,
    513 % 32 == 1) sampled from a wrong distribution (benchmarks/README.md). At Gemma 3 1B's shape (random weights,
    float32) and that batch layout: under eager_attention_for_generation, generate's own scores must be the SDPA
    forward pass's (what training scores them with), and the fast engine's greedy tokens must be an eager forward's
    argmax at every step."""
    from mcgrpo.fast_generation import StaticGenerator
    from mcgrpo.generation import left_pad
    from mcgrpo.patches import eager_attention_for_generation
    from mcgrpo.tiny import build_model

    model = build_model("gemma-3-1b", dtype=torch.float32, attn_implementation="sdpa").cuda().eval()
    rng = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 5000, (n,), generator=rng).tolist() for n in (513, 170, 349, 449, 501, 463, 454, 363)]
    input_ids, mask = left_pad(rows, 0, "cuda")
    new = 16

    def forward_logprobs(sequences):
        full_mask = torch.cat([mask, torch.ones_like(sequences[:, input_ids.shape[1]:])], 1)
        with torch.no_grad():
            logits = model(input_ids=sequences, attention_mask=full_mask, logits_to_keep=new + 1).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1)

    torch.manual_seed(0)
    with torch.no_grad(), eager_attention_for_generation(model):
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             max_new_tokens=new, min_new_tokens=new, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=0)
    assert model.config._attn_implementation == "sdpa"
    tokens = out.sequences[:, input_ids.shape[1]:]
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).gather(-1, tokens[..., None])
    assert (sampled - forward_logprobs(out.sequences).gather(-1, tokens[..., None])).abs().max() < 1e-3

    generator = StaticGenerator(model, batch_size=len(rows), max_length=input_ids.shape[1] + new)  # grouped attention
    fast = generator.generate(input_ids, mask, max_new_tokens=new, eos_token_ids=[], pad_token_id=0)[:, :new]
    model.set_attn_implementation("eager")  # an independent reference for the fast engine's own attention
    logprobs = forward_logprobs(torch.cat([input_ids, fast], 1))
    assert (logprobs.max(-1).values - logprobs.gather(-1, fast[..., None])[..., 0]).max() < 1e-3
