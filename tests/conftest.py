import pytest
import torch


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
    from mcgrpo.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gemma")


@pytest.fixture(scope="session")
def tiny_model_params(tiny_model_dir):
    from mcgrpo.params import ModelParams

    return ModelParams(name=str(tiny_model_dir), backend="transformers", dtype="float32")


@pytest.fixture
def records():
    from mcgrpo.data.synthetic import make_synthetic_mc

    return [{**r, "source": "synthetic"} for r in make_synthetic_mc(6, seed=1)]
