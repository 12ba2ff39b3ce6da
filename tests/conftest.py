import os

import pytest
import torch

# Under pytest-xdist (make test runs two workers on a 2-core machine), each worker and the dvc/python processes
# its tests start use one thread: two workers of two threads each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    # GPU tests are collected everywhere and skipped with a visible reason where CUDA is missing.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from mcgrpo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gemma")


@pytest.fixture(scope="session")
def tiny_model_params(tiny_model_dir):
    from mcgrpo.params import ModelParams

    return ModelParams(name=str(tiny_model_dir), backend="transformers", dtype="float32")


@pytest.fixture
def records():
    from mcgrpo.data.synthetic import make_synthetic_mc

    return [{**r, "source": "synthetic"} for r in make_synthetic_mc(6, seed=1)]


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter for the tiny model with non-zero weights, so base and fine-tuned differ."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out
