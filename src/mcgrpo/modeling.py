"""Loading base models, adapters and tokenizers; the only module that knows about Unsloth.

Backends: "unsloth" (FastLanguageModel, CUDA only) and "transformers" (+ peft). "auto" picks
Unsloth when CUDA and the package are both present. The random-init models the tests, the demo and
the benchmarks use are built in `mcgrpo.tiny`, which no real stage imports.
"""

import importlib.util
import os
from pathlib import Path

import torch

from mcgrpo.errors import UserError
from mcgrpo.fileio import safetensors_problem

CHAT_TEMPLATE = (Path(__file__).parent / "gemma_chat_template.jinja").read_text()
END_OF_TURN = "<end_of_turn>"

def pick_backend(requested: str) -> str:
    cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth" and not (cuda and has_unsloth):
        raise UserError("model.backend=unsloth needs a CUDA GPU and `pip install -r requirements-gpu.txt`; "
                        "set model.backend to auto or transformers")
    if requested == "auto":
        return "unsloth" if cuda and has_unsloth else "transformers"
    return requested


def torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        # bf16 on GPUs that have it; Gemma 3 overflows in fp16, so never fall back to that.
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def set_matmul_precision(tf32: bool) -> None:
    """float32 matmuls on CUDA through TF32 tensor cores, or in full fp32. Process-wide (torch has no per-model
    switch), so every load sets it; the CPU is left alone (oneDNN would read the same setting)."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


def check_local_path(name: str, what: str = "model.name") -> None:
    """A name that is meant as a local path fails at once, not after a minute of Hub retries.

    Local: it starts with . / ~, ends in .gguf, or its first path part exists here (models/tiny-gemma when
    models/ exists). Hub ids are "org/name", and "org" is not a folder in the project.
    """
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        raise UserError(f"{what}={name!r}: a GGUF file; convert it first with `mcgrpo from-gguf models/NAME --gguf "
                        f"{name}` and set {what} to that folder")
    local = name.startswith((".", "/", "~")) or (len(path.parts) > 1 and Path(path.parts[0]).exists())
    if local and not path.exists():
        near = sorted(str(p) for p in path.parent.glob("*")) if path.parent.is_dir() else []
        hint = f" ({path.parent} holds: {', '.join(near[:8])})" if near else ""
        raise UserError(f"{what}={name!r}: no such folder{hint}; build one with `mcgrpo tiny-model {name}` or "
                        "`mcgrpo from-gguf`, or give a Hugging Face id")


def _load_error(what: str, name: str, err: Exception) -> UserError:
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():  # a path, not a hub id
        return UserError(f"{what}={name!r}: no such folder; build one with `mcgrpo tiny-model {name}` "
                         "or give a Hugging Face id")
    return UserError(f"{what}={name!r}: could not load ({type(err).__name__}: {err}). Check the id or path; "
                     "offline, set HF_HUB_OFFLINE=1 and use a model already in the Hugging Face cache")


def load_tokenizer(p):
    from transformers import AutoTokenizer

    check_local_path(p.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p.name, revision=p.revision, trust_remote_code=p.trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error("model.name", p.name, err) from None
    # No chat-template check here: completion prompt variants need none (prompts.render_prompt checks chat ones).
    tokenizer.padding_side = "left"  # decoder-only batches generate from the right edge
    return tokenizer


def _stop_token_ids(tokenizer, model) -> list[int]:
    """Gemma ends a turn with <end_of_turn>, not <eos>: generation must stop at either."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids.add(tokenizer.eos_token_id)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.add(eot)
    return sorted(i for i in ids if i is not None)


def is_whole_model(adapter_dir) -> bool:
    """Whether the train stage's output folder holds a whole model (train.finetune=full), not a LoRA adapter."""
    folder = Path(adapter_dir)
    return (folder / "config.json").exists() and not (folder / "adapter_config.json").exists()


def _attach_adapter(model, adapter_dir):
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserError(f"{adapter_dir}: no adapter_config.json; run the train stage first (dvc repro train)")
    weights = adapter_dir / "adapter_model.safetensors"
    # a truncated or damaged file: say which, before peft fails somewhere inside
    if weights.exists() and (problem := safetensors_problem(weights)):
        raise UserError(f"{weights}: {problem}; restore it (`dvc checkout models/adapter`) or retrain "
                        "(`dvc repro train`)")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"{adapter_dir}: the adapter does not fit base model {model.name_or_path!r} ({err}); "
                        "retrain it, or set model.name to the model it was trained on") from None


def load_model(p, adapter_dir=None, lora=None, seed=0, backend=None, full_finetune=False):
    """(model, tokenizer, peft_config) for inference, for LoRA training when `lora` is given, or for training every
    weight with `full_finetune`.

    Inference always loads through transformers, with the adapter merged in (or, when `adapter_dir` holds a whole
    model from full fine-tuning, that model). peft_config is a LoraConfig for TRL to apply (transformers backend)
    or None when the model is already a PEFT model (Unsloth applies LoRA itself, with its fused kernels) or
    trains whole.
    """
    check_local_path(p.name)
    set_matmul_precision(p.tf32)
    backend = backend or pick_backend(p.backend)
    training = lora is not None or full_finetune
    if full_finetune and backend == "unsloth":
        raise UserError("full fine-tuning trains through transformers: set model.backend to auto or transformers")
    if not training:
        # Unsloth is the training backend only: its inference path is slower than plain transformers for
        # batched eval (benchmarks/README.md), so eval never uses it.
        backend = "transformers"
    if backend == "unsloth":
        model, tokenizer, peft_config = _load_unsloth(p, lora, seed)
    else:
        model, tokenizer, peft_config = _load_transformers(p, lora, adapter_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = _stop_token_ids(tokenizer, model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not training:
        model.eval()
    return model, tokenizer, peft_config


def _load_unsloth(p, lora, seed):
    """Unsloth's model with its own LoRA applied (fused kernels, its gradient checkpointing): no peft_config."""
    from unsloth import FastLanguageModel

    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=p.name, revision=p.revision, max_seq_length=p.max_seq_length, dtype=torch_dtype(p.dtype),
            load_in_4bit=False, trust_remote_code=p.trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error("model.name", p.name, err) from None
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor for multimodal checkpoints
    model = FastLanguageModel.get_peft_model(
        model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, use_gradient_checkpointing="unsloth", random_state=seed)
    return model, tokenizer, None


def _load_transformers(p, lora, adapter_dir):
    """The transformers model: with a LoraConfig for TRL to apply (training), or with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(p)
    whole = adapter_dir is not None and lora is None and is_whole_model(adapter_dir)  # full fine-tuning's output
    source, revision = (str(adapter_dir), None) if whole else (p.name, p.revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=torch_dtype(p.dtype), attn_implementation=p.attn_implementation,
            trust_remote_code=p.trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error("the trained model" if whole else "model.name", source, err) from None
    peft_config = None
    if lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora.target_modules, task_type="CAUSAL_LM")
    elif adapter_dir and not whole:
        model = _attach_adapter(model, adapter_dir)
    if torch.cuda.is_available():
        # one GPU per process under `accelerate launch` (LOCAL_RANK); cuda:0 otherwise
        model = model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return model, tokenizer, peft_config
