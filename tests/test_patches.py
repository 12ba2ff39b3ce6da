"""mcgrpo.patches: each patched third-party internal still has the shape its caller relies on, and a version the
patches were not written for is refused with a message."""

import ast
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

from mcgrpo import patches
from mcgrpo.errors import UserError
from mcgrpo.torch_logprobs import TorchChunkedLogProb


def trl_source(relative: str) -> ast.Module:
    """A module of the installed TRL, parsed (trl.kernels cannot be imported without Triton)."""
    root = Path(importlib.util.find_spec("trl").origin).parent
    return ast.parse((root / relative).read_text())


def test_plain_torch_kernel_takes_what_trls_kernel_takes_and_is_passed():
    kernel = next(n for n in ast.walk(trl_source("kernels/chunked_logprob.py"))
                  if isinstance(n, ast.ClassDef) and n.name == "ChunkedLogProbFunction")
    forward = next(n for n in kernel.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    trl_params = [a.arg for a in forward.args.args][1:]  # without ctx
    assert list(inspect.signature(TorchChunkedLogProb.apply).parameters) == trl_params
    calls = [n for n in ast.walk(trl_source("trainer/utils.py")) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "apply"
             and getattr(n.func.value, "id", "") == "_ChunkedLogProbFunction"]
    assert calls and all(len(c.args) == len(trl_params) and not c.keywords for c in calls)


def test_trainer_internals_the_rollouts_read_exist():
    from trl import GRPOTrainer

    assert list(inspect.signature(GRPOTrainer._tokenize_prompts).parameters) == ["self", "prompts"]
    for method in ("_generate", "_generate_and_score_completions", "training_step"):  # StepPhases times these
        assert callable(getattr(GRPOTrainer, method)), method
    assert "self._generate(" in inspect.getsource(GRPOTrainer._generate_and_score_completions)
    init = inspect.getsource(GRPOTrainer.__init__)
    for attribute in ("self._tokenizer", "self.eos_token_ids", "self.max_completion_length", "self.temperature"):
        assert f"{attribute} =" in init, attribute


def test_trainer_internals_the_shared_prompt_passes_replace_keep_their_shape():
    from trl import GRPOTrainer
    from trl.trainer import grpo_trainer

    parameters = list(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    assert parameters[:7] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
                              "compute_entropy"] and parameters[7] == "compute_aux_loss"
    # every other argument is multimodal (None for text), and the calls pass the passes' inputs in that order
    assert all(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters[name].default is None
               for name in parameters[8:])
    assert "shuffle_sequence_dict(generation_batch)" in inspect.getsource(GRPOTrainer._prepare_inputs)
    assert callable(grpo_trainer.shuffle_sequence_dict)
    # the fused LM head scores pre-shifted labels as they are (what each packed segment's labels are)
    assert "shift_labels" in inspect.getsource(grpo_trainer.add_fused_lm_head)


def test_decoder_layer_takes_the_cache_the_compiled_layers_pass():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer

    parameters = inspect.signature(Gemma3DecoderLayer.forward).parameters
    assert {"hidden_states", "past_key_values"} <= set(parameters)


def test_input_embedding_hook_is_still_named_as_the_patch_expects():
    from transformers import modeling_utils

    assert "def make_inputs_require_grads" in inspect.getsource(modeling_utils.PreTrainedModel.enable_input_require_grads)


def test_a_version_outside_the_written_range_is_refused(monkeypatch):
    patches.check_version.cache_clear()
    monkeypatch.setitem(patches.WRITTEN_FOR, "trl", ("0.1", "0.2"))
    try:
        with pytest.raises(UserError, match=r"trl .* is installed, but mcgrpo's patch of X was written for trl 0.1–0.2"):
            patches.check_version("trl", "X")
    finally:
        monkeypatch.undo()
        patches.check_version.cache_clear()
    patches.check_version("trl", "X")  # the installed, pinned version passes


def test_layer_forwards_puts_back_what_was_there():
    plain, hooked = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    hooked.forward = lambda x: "hook"
    with patches.layer_forwards([plain, hooked], [lambda x: "a", lambda x: "b"]):
        assert (plain(1), hooked(1)) == ("a", "b")
    assert "forward" not in vars(plain) and hooked(1) == "hook"


def test_generate_runs_with_eager_attention_and_sdpa_comes_back(tiny_model_params):
    """generate_with_eager_attention: every forward inside `generate` sees eager attention (here on the CPU, which
    the devices argument names; by default only CUDA switches), the tokens are the same as SDPA's, and SDPA is back
    after; the same through a PeftModel, as TRL's rollouts call it. On CPU nothing switches by default."""
    from mcgrpo.modeling import load_model
    from mcgrpo.params import LoraParams

    model, tok, _ = load_model(tiny_model_params.model_copy(update={"attn_implementation": "sdpa"}))
    enc = tok(["a b c", "the passage says " * 20], return_tensors="pt", padding=True, add_special_tokens=False)
    greedy = {"max_new_tokens": 6, "do_sample": False, "top_k": None, "pad_token_id": tok.pad_token_id}
    sdpa_tokens = model.generate(**enc, **greedy)
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append(module.config._attn_implementation))
    with patches.eager_attention_for_generation(model):  # CPU: not switched
        model.generate(**enc, **greedy)
    assert set(seen) == {"sdpa"}
    seen.clear()
    patches.generate_with_eager_attention(model, devices=("cpu",))
    assert torch.equal(model.generate(**enc, **greedy), sdpa_tokens)
    assert set(seen) == {"eager"} and model.config._attn_implementation == "sdpa"
    hook.remove()

    from peft import get_peft_model

    base, _, peft_config = load_model(tiny_model_params.model_copy(update={"attn_implementation": "sdpa"}),
                                      lora=LoraParams(r=4))
    peft_model = get_peft_model(base, peft_config)
    with patches.eager_attention_for_generation(peft_model, devices=("cpu",)):
        assert peft_model.get_base_model().config._attn_implementation == "eager"
    assert peft_model.get_base_model().config._attn_implementation == "sdpa"
