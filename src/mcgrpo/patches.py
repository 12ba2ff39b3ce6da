"""Every place this project reaches into a third-party internal, in one module.

Each function says which private name it uses, and checks first that the installed package is a version it
was written for (the range requirements.txt and pyproject.toml allow), so a newer TRL or transformers fails
here with a message naming the patch, not later with an AttributeError deep inside a training step.
tests/test_patches.py checks that each patched signature still matches what its caller passes.
"""

import functools
from contextlib import contextmanager
from importlib.metadata import version

from packaging.version import Version

from mcgrpo.errors import UserError

# package -> (lowest, highest) version the patches below were written and tested for
WRITTEN_FOR = {"trl": ("1.0", "1.15.0"), "transformers": ("5.0", "5.17.0")}


@functools.cache
def check_version(package: str, patch: str) -> None:
    low, high = WRITTEN_FOR[package]
    installed = version(package)
    if not Version(low) <= Version(installed) <= Version(high):
        raise UserError(f"{package} {installed} is installed, but mcgrpo's patch of {patch} was written for "
                        f"{package} {low}–{high}: install the pinned stack (pip install -r requirements.txt), or "
                        "check that internal and widen WRITTEN_FOR in src/mcgrpo/patches.py")


# --- TRL ----------------------------------------------------------------------------------------------


def install_torch_logprobs() -> bool:
    """Plug mcgrpo.torch_logprobs' plain-torch kernel into TRL where its Triton one could not be imported (CPU
    machines without Triton: TRL 1.15 has no fallback); True if installed. Private: trl.trainer.utils.
    _ChunkedLogProbFunction, None when Triton is missing."""
    check_version("trl", "trl.trainer.utils._ChunkedLogProbFunction")
    import trl.trainer.utils as trl_utils

    from mcgrpo.torch_logprobs import TorchChunkedLogProb

    if getattr(trl_utils, "_ChunkedLogProbFunction", object()) is None:
        trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
        return True
    return False


def tokenize_prompts(trainer, prompts: list) -> list[list[int]]:
    """Prompt ids as TRL's GRPOTrainer tokenizes them (its chat templating), so a `rollout_func`'s ids match the
    trainer's own forward. Private: GRPOTrainer._tokenize_prompts."""
    check_version("trl", "GRPOTrainer._tokenize_prompts")
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    return prompt_ids


def rollout_settings(trainer) -> dict:
    """What a `rollout_func` needs from the trainer to sample as TRL would. Private: GRPOTrainer._tokenizer and
    the attributes GRPOTrainer.__init__ sets (eos_token_ids, max_completion_length, temperature)."""
    check_version("trl", "GRPOTrainer's rollout attributes")
    return {"pad_token_id": trainer._tokenizer.pad_token_id, "eos_token_ids": list(trainer.eos_token_ids),
            "max_completion_length": trainer.max_completion_length, "temperature": trainer.temperature}


# --- transformers and torch -------------------------------------------------------------------------------


@contextmanager
def input_grad_hooks_removed(model):
    """Run with none of the input-embedding hooks that make the embeddings' output require grad; put one back.

    Those hooks only matter for backward passes. Inside the compiled rollout step Dynamo cannot trace their
    `requires_grad_` call (fullgraph). They also pile up: TRL turns gradient checkpointing off and on around
    every log-prob pass, and each `gradient_checkpointing_enable` adds one more; one is enough, and one is what
    comes back. Private: torch's Module._forward_hooks dict, and transformers' hook name
    make_inputs_require_grads.
    """
    check_version("transformers", "the make_inputs_require_grads forward hook")
    hooks = model.get_input_embeddings()._forward_hooks
    removed = {key: hook for key, hook in hooks.items() if getattr(hook, "__name__", "") == "make_inputs_require_grads"}
    for key in removed:
        del hooks[key]
    try:
        yield
    finally:
        if removed:
            newest = max(removed)  # the one the model's own handle refers to
            hooks[newest] = removed[newest]


@contextmanager
def layer_forwards(layers, forwards):
    """Each layer's `forward` replaced by the matching callable for the duration (an instance attribute shadows
    the class's method); a forward set on the instance before (a hook's) is put back after."""
    before = [vars(layer).get("forward") for layer in layers]
    for layer, forward in zip(layers, forwards):
        layer.forward = forward
    try:
        yield
    finally:
        for layer, forward in zip(layers, before):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def raise_recompile_limit(at_least: int) -> None:
    """Dynamo recompiles a function at most `recompile_limit` times (8 by default), then runs it eagerly; the
    compiled decoder-layer functions are called with every layer object of the model, which its guards can tell
    apart, so they need more. Global: torch._dynamo.config."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, at_least)
