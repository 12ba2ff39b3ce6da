"""Every place this project reaches into a third-party internal, in one module.

Each function says which private name it uses, and checks first that the installed package is a version it
was written for (the range requirements.txt and pyproject.toml allow), so a newer TRL or transformers fails
here with a message naming the patch, not later with an AttributeError deep inside a training step.
tests/test_patches.py checks that each patched signature still matches what its caller passes.
"""

import contextlib
import functools
import os
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


def time_trainer_method(trainer, name: str, record, clock) -> None:
    """Wrap one of GRPOTrainer's methods on this trainer so that each call's time by `clock` goes to
    `record(name, seconds)`. Private: GRPOTrainer._generate (the rollouts: sampling only) and
    GRPOTrainer._generate_and_score_completions (rollouts, rewards, advantages and the no-grad log-prob passes); the
    public training_step (one micro-batch's forward and backward, and the generation when it is due) is timed the
    same way. Each call is also a profiler range named "mcgrpo.<name>", which benchmarks/grpo_step.py reads to say
    in which phase the GPU sat idle."""
    import torch

    check_version("trl", f"GRPOTrainer.{name}")
    plain = getattr(trainer, name)

    @functools.wraps(plain)
    def timed(*args, **kwargs):
        start = clock()
        with torch.profiler.record_function(f"mcgrpo.{name}"):
            out = plain(*args, **kwargs)
        record(name, clock() - start)
        return out

    setattr(trainer, name, timed)


def use_shared_prompts(trainer, completion_logps, shuffle) -> None:
    """Route the trainer's text-only log-prob passes (the training forward, the reference and old-policy passes)
    through `completion_logps(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, *,
    pad_token_id, autocast)` -> (log-probs, entropies or None), and the shuffle of each generation batch before it is
    split into micro-batches through `shuffle` (mcgrpo.shared_prompt's, wired by training.shared_prompt_passes).
    Passes with images or an MoE aux loss stay TRL's. Private: GRPOTrainer._get_per_token_logps_and_entropies
    (replaced on the instance), GRPOTrainer._prepare_inputs and the module-level shuffle_sequence_dict it calls,
    GRPOTrainer._tokenizer."""
    check_version("trl", "GRPOTrainer._get_per_token_logps_and_entropies and _prepare_inputs")
    import trl.trainer.grpo_trainer as grpo_module

    plain_logps, plain_prepare = trainer._get_per_token_logps_and_entropies, trainer._prepare_inputs
    pad_token_id = trainer._tokenizer.pad_token_id

    @functools.wraps(plain_logps)
    def logps(model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
              compute_aux_loss=False, **multimodal):
        if compute_aux_loss or any(value is not None for value in multimodal.values()):
            return plain_logps(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                               compute_aux_loss, **multimodal)
        found, entropies = completion_logps(model, input_ids, attention_mask, logits_to_keep,
                                            batch_size or input_ids.shape[0], compute_entropy,
                                            pad_token_id=pad_token_id, autocast=trainer.accelerator.autocast)
        return found, entropies, None

    @functools.wraps(plain_prepare)
    def prepare(generation_batch):
        before = grpo_module.shuffle_sequence_dict
        grpo_module.shuffle_sequence_dict = shuffle
        try:
            return plain_prepare(generation_batch)
        finally:
            grpo_module.shuffle_sequence_dict = before

    trainer._get_per_token_logps_and_entropies, trainer._prepare_inputs = logps, prepare


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
def eager_attention_for_generation(model, devices=("cuda",)):
    """Run `model.generate` with eager attention where the model runs SDPA on CUDA; SDPA comes back after.

    On an H200 (transformers 5.17, torch 2.11, float32), `generate` with SDPA on a left-padded Gemma 3 batch sampled
    from a wrong distribution whenever the padded prompt length L was past the 512-token sliding window with
    L % 32 == 1: its tokens were 23–26 nats less likely under the model's own forward pass, while eager `generate`
    agreed with that forward to 2e-4, and SDPA's forward without a KV cache agreed with eager to 4e-5
    (benchmarks/README.md). In GRPO those were the steps whose reward fell to ~0 and whose KL exploded. So the
    KV-cached path is what switches; training forwards keep SDPA. Private: config._attn_implementation (read to put
    it back); `set_attn_implementation` is public.
    """
    switch = attention_implementation(model) == "sdpa" and next(model.parameters()).device.type in devices
    with attention_for_call(model, "eager" if switch else None):
        yield


@contextmanager
def inductor_cache_folder(name: str):
    """Inductor's on-disk caches in subfolder `name` of their folder for the duration, then where they were. Its keys
    leave out settings that change the compiled graphs, e.g. SDPA's backends (torch 2.11 and 2.13,
    pytorch/pytorch#185449): a process would load graphs compiled under the other setting. Private:
    torch._inductor.runtime.cache_dir_utils.cache_dir (the folder, TORCHINDUCTOR_CACHE_DIR or torch's default),
    which reads that variable on every use."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir(), name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


@contextmanager
def attention_backends(cudnn: bool):
    """A context in which SDPA may use every backend (cudnn true), or every one but cuDNN's (false): the training
    step (train.cudnn_attention) and the eval stages (eval.cudnn_attention). cuDNN's attention builds an execution
    plan for each new input shape (2.9 s the first, ~0.15 s each after, on an H200: benchmarks/README.md), and eval
    batches sorted by length, like training's, meet a new length at almost every batch. A compiled graph keeps the
    backend it was traced with: torch.compile does not guard on these flags, so whatever compiles runs inside the
    context. Inductor's on-disk cache leaves the choice out of its keys too, so each choice compiles into a cache
    folder of its own."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = contextlib.nullcontext() if cudnn else \
        sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    with inductor_cache_folder("sdpa-cudnn" if cudnn else "sdpa-no-cudnn"), backends:
        yield


@contextmanager
def split_attention_compiles(on: bool):
    """Within (when on): inductor without its coalescing analysis for tiling (torch._inductor.config.triton.
    coalesce_tiling_analysis). On an H100 (torch 2.11, 2026-12-05) compiling the policy's layers with
    train.shared_prompt_attention split failed in it, in tiling_utils.get_pw_red_splits' assertion
    (pytorch/pytorch#197077, open; the assertion is unchanged in torch 2.13), so the split path compiles without it.
    Read at compile time, so the context spans trainer.train, where the layers compile."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"triton.coalesce_tiling_analysis": False}) if on else contextlib.nullcontext():
        yield


def transformers_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's transformers model


def attention_implementation(model) -> str:
    """The attention implementation a (peft-wrapped or plain) transformers model runs. Private:
    config._attn_implementation (set_attn_implementation, which changes it, is public)."""
    check_version("transformers", "config._attn_implementation")
    return transformers_model(model).config._attn_implementation


@contextmanager
def attention_for_call(model, name: str | None):
    """The model runs attention implementation `name` for the duration (none given: unchanged), then the one before."""
    base = transformers_model(model)
    before = attention_implementation(base)
    switch = name is not None and name != before
    if switch:
        base.set_attn_implementation(name)
    try:
        yield
    finally:
        if switch:
            base.set_attn_implementation(before)


def generate_with_eager_attention(model, devices=("cuda",)) -> None:
    """Make `model.generate` (an instance attribute shadowing the class's) run under eager_attention_for_generation:
    for callers that reach `generate` themselves, like TRL's own rollouts."""
    plain = model.generate

    @functools.wraps(plain)
    def generate(*args, **kwargs):
        with eager_attention_for_generation(model, devices):
            return plain(*args, **kwargs)

    model.generate = generate


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


def gemma3_attention_parts():
    """(apply_rotary_pos_emb, attention function for a config) as Gemma3Attention.forward uses them, for
    fast_generation.FusedGemma3Attention, which re-states that forward with q/k/v as one matmul. Private:
    transformers.models.gemma3.modeling_gemma3.apply_rotary_pos_emb and eager_attention_forward."""
    check_version("transformers", "Gemma3Attention.forward (fast_generation.FusedGemma3Attention)")
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb, eager_attention_forward

    def attention_function(config):
        return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)
    return apply_rotary_pos_emb, attention_function
