"""GPU-only checks: collected everywhere, skipped with a visible reason on CPU machines (see conftest)."""

import importlib.util

import pytest

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


@pytest.mark.skipif(not importlib.util.find_spec("unsloth"), reason="unsloth not installed (make gpu)")
def test_unsloth_backend_adds_lora(tiny_model_dir):
    from mcgrpo.params import LoraParams

    model, tok, peft_config = load_model(ModelParams(name=str(tiny_model_dir), backend="unsloth"), lora=LoraParams(r=4))
    assert peft_config is None and hasattr(model, "peft_config")  # Unsloth applied LoRA itself
