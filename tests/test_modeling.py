import json

import pytest
import torch

from mcgrpo.errors import UserError
from mcgrpo.generation import generate
from mcgrpo.modeling import load_model, pick_backend, set_matmul_precision
from mcgrpo.tiny import PRESETS, build_model
from mcgrpo.params import ModelParams
from mcgrpo.prompts import render_prompt


def test_tiny_model_is_a_gemma3_with_gemma_stop_tokens(tiny_model_dir, tiny_model_params):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    model, tok, peft_config = load_model(tiny_model_params)
    assert peft_config is None and not model.training
    assert tok.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id
    assert tok.eos_token_id in model.generation_config.eos_token_id and tok.padding_side == "left"


def test_gemma_1b_preset_matches_the_real_config():
    p = PRESETS["gemma-3-1b"]
    assert (p["hidden_size"], p["num_hidden_layers"], p["num_attention_heads"], p["num_key_value_heads"],
            p["head_dim"], p["intermediate_size"], p["vocab_size"], p["sliding_window"]) == \
        (1152, 26, 4, 1, 256, 6912, 262144, 512)
    with torch.device("meta"):
        model = build_model("gemma-3-1b")
    assert 0.99e9 < sum(x.numel() for x in model.parameters()) < 1.01e9  # "1B"
    assert model.config.layer_types[5] == "full_attention" and model.config.layer_types[0] == "sliding_attention"


def test_batched_greedy_generation_equals_one_by_one(tiny_model_params, records):
    # Left padding and length-sorted batches must not change what greedy decoding produces.
    model, tok, _ = load_model(tiny_model_params)
    prompts = [render_prompt(tok, r, v) for r in records for v in ("direct", "cot")]
    batched = generate(model, tok, prompts, batch_size=5, max_new_tokens=8)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all(0 < o["n_tokens"] <= 8 for o in batched)


def test_sampling_is_seeded(tiny_model_params, records):
    model, tok, _ = load_model(tiny_model_params)
    prompts = [render_prompt(tok, r, "cot") for r in records[:3]]
    a = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3)
    b = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_model(ModelParams(name=str(tmp_path / "nope"), backend="transformers"))


def test_tokenizer_without_chat_template(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "chat_template.jinja").unlink()
    cfg = json.loads((broken / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    # a pretrained model loads (completion variants need no template); a chat variant is refused clearly
    _, tok, _ = load_model(ModelParams(name=str(broken), backend="transformers"))
    record = {"context": "Tom went home.", "question": "Where?", "options": ["home", "school"], "answer": "A"}
    with pytest.raises(UserError, match="needs a chat template.*completion variant"):
        render_prompt(tok, record, "cot")
    assert render_prompt(tok, record, "completion_direct").startswith("<bos>Article: Tom went home.")


def test_backend_choice_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert pick_backend("auto") == "transformers"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        pick_backend("unsloth")


def test_tf32_switch_is_cuda_only_and_follows_the_param(monkeypatch, tiny_model_params):
    before = torch.get_float32_matmul_precision()
    try:
        if not torch.cuda.is_available():  # on CPU the switch leaves oneDNN's fp32 matmuls alone
            torch.set_float32_matmul_precision("highest")
            load_model(tiny_model_params.model_copy(update={"tf32": True}))
            assert torch.get_float32_matmul_precision() == "highest"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        set_matmul_precision(True)
        assert torch.get_float32_matmul_precision() == "high"
        set_matmul_precision(False)  # every load sets it, so a later fp32-exact load is not left in TF32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_plain_torch_logprobs_match_log_softmax():
    from mcgrpo.torch_logprobs import TorchChunkedLogProb

    torch.manual_seed(0)
    hidden, weight = torch.randn(7, 16, requires_grad=True), torch.randn(50, 16)
    targets = torch.randint(0, 50, (7,))
    logp, entropy, *_ = TorchChunkedLogProb.apply(hidden, weight, None, targets, 0.7, 4096, 30.0, 0.5, ("entropy",))
    logits = 30.0 * torch.tanh(hidden @ weight.t() * 0.5 / 30.0) / 0.7
    ref = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(logp.double(), ref.gather(-1, targets[:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(entropy.double(), -(ref.exp() * ref).sum(-1), atol=1e-5)
    logp.sum().backward()  # differentiable, as GRPO needs
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_loglik_scores_match_a_plain_forward_pass(tiny_model_params, records):
    # Scoring options from a shared, left-padded context cache must equal scoring each option alone:
    # one question per batch, and three of different lengths in one batch (one passage past the tiny
    # model's 128-token sliding window, so the sliding cache layers' trimming is exercised too).
    from mcgrpo.loglik import loglik_context, loglik_rows, option_logprobs

    model, tok, _ = load_model(tiny_model_params)
    with torch.no_grad():  # random init attends almost uniformly, blind to positions: sharpen it so they matter
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.fill_(3.0)
            layer.self_attn.k_norm.weight.fill_(3.0)
            layer.self_attn.v_proj.weight.mul_(10)
    records = [{**records[0], "context": records[0]["context"] * 3}] + records[1:3]
    # options of several tokens and different lengths: all but the first token are scored from the option pass
    records = [{**r, "options": [f"{o}, as the passage says" + " indeed" * i for i, o in enumerate(r["options"])]}
               for r in records]
    lengths = [len(tok(loglik_context(r))["input_ids"]) for r in records]
    assert len(set(lengths)) == 3 and max(lengths) > model.config.sliding_window > min(lengths)
    batched = option_logprobs(model, tok, records, batch_size=5)
    together = option_logprobs(model, tok, records, batch_size=12)
    assert [x for q in together for x in q] == pytest.approx([x for q in batched for x in q], abs=1e-4)
    for record, scores in zip(records, batched):
        ctx = tok(loglik_context(record))["input_ids"]
        for option, score in zip(record["options"], scores):
            opt = tok(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ctx + opt])).logits[0].double(), -1)
            expected = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(opt))
            assert score == pytest.approx(expected, abs=1e-3)
    rows = loglik_rows(model, tok, records, 4, "base", lambda q: "wh")
    assert all(r["variant"] == "loglik" and r["pred"] in "ABCD" and len(r["option_logprobs"]) == 4 for r in rows)
    assert rows[0]["pred"] == "ABCD"[max(range(4), key=batched[0].__getitem__)]


def test_eval_modes(tiny_model_params, records):
    from mcgrpo.evaluation import answer_eval_set
    from mcgrpo.params import EvalParams

    model, tok, _ = load_model(tiny_model_params)
    variants = lambda mode: sorted({r["variant"] for r in answer_eval_set(  # noqa: E731
        model, tok, records[:2], EvalParams(mode=mode, max_new_tokens=4), "base")})
    assert variants("loglik") == ["loglik"]
    assert variants("generate") == ["cot", "direct"]
    assert variants("both") == ["cot", "direct", "loglik"]


def test_eval_runs_with_cudnn_attention_as_asked(tiny_model_params, records, monkeypatch):
    # eval.cudnn_attention false: the log-likelihood passes and the generation run with SDPA's cuDNN backend off, and
    # it is back on after; true (the default) leaves it on.
    import torch

    import mcgrpo.evaluation as evaluation
    from mcgrpo.params import EvalParams

    seen = []
    for name in ("loglik_rows", "generate"):
        real = getattr(evaluation, name)
        monkeypatch.setattr(evaluation, name, lambda *a, _real=real, _name=name, **k: (
            seen.append((_name, torch.backends.cuda.cudnn_sdp_enabled())), _real(*a, **k))[1])
    model, tok, _ = load_model(tiny_model_params)
    for cudnn in (False, True):
        seen.clear()
        evaluation.answer_eval_set(model, tok, records[:2], EvalParams(max_new_tokens=2, variants=["direct"],
                                                                       cudnn_attention=cudnn), "base")
        assert seen == [("loglik_rows", cudnn), ("generate", cudnn)]
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_warm_start_teaches_the_answer_format(tmp_path, records):
    # The demo depends on this: without it every GRPO reward is 0. 120 steps keep the test short.
    from mcgrpo.tiny import build_tiny_model

    params = ModelParams(name=str(build_tiny_model(tmp_path / "warm", warm_start_steps=120)), backend="transformers")
    model, tok, _ = load_model(params)
    from mcgrpo.rewards import judge

    outs = generate(model, tok, [render_prompt(tok, r, "cot") for r in records], max_new_tokens=24)
    assert sum(judge(o["text"], r["answer"])["format_ok"] for o, r in zip(outs, records)) >= 5


def test_tiny_model_command(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mcgrpo.cli", "tiny-model", str(tmp_path / "m")], text=True,
                         capture_output=True, check=True).stdout
    assert "random-init Gemma3ForCausalLM" in out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and (tmp_path / "m" / "tokenizer.json").exists()
