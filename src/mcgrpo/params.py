"""Load and validate params.yaml: the only module that reads it.

One pydantic model per section. Unknown keys are errors (with a did-you-mean), and numbers given
as strings are accepted, because `dvc exp run -S train.learning_rate=1e-5` writes `1e-05`, which
YAML reads back as a string.
"""

import difflib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcgrpo.errors import UserError
from mcgrpo.prompts import VARIANTS
from mcgrpo.rewards import PICK_VARIANT, REWARDS, TRAINING_ONLY

PARAMS_FILE = "params.yaml"
LEARNED_REWARD = "learned"  # the reward_model stage's classifier, the one reward that is not a pure function


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        hint = difflib.get_close_matches(variant, VARIANTS, n=1)
        raise ValueError(f"unknown prompt variant {variant!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                         f"choose from {list(VARIANTS)}")
    return variant


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# One name per generator in eval.engine and train.rollout_engine: "fast" is the project's StaticGenerator (static
# KV cache, compiled decode step, CUDA graphs), "hf" is `model.generate`, "hf_static" / "hf_continuous" are
# transformers' static cache and continuous batching under TRL. Earlier names are refused with the new one.
RENAMED_ENGINES = {"eval.engine": {"static": "fast"},
                   "train.rollout_engine": {"generate": "hf", "static": "hf_static", "continuous": "hf_continuous"}}


def refuse_renamed_engine(key: str, value):
    """A validator's helper: an engine name RENAMED_ENGINES[key] knows from before is an error naming the new one."""
    new = RENAMED_ENGINES[key].get(value)
    if new:
        raise ValueError(f"{value!r} was renamed (did you mean {new!r}?)")
    return value


class ModelParams(Section):
    name: str = "unsloth/gemma-3-1b-it"  # hub id or local folder
    revision: str | None = None  # hub branch/tag/commit, pinned for reproducibility
    backend: Literal["auto", "unsloth", "transformers"] = "auto"  # auto: unsloth on CUDA if installed
    # float16 is refused on purpose: Gemma 3 activations overflow in fp16.
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    tf32: bool = False  # float32 matmuls on CUDA through TF32 tensor cores (fp32 accumulate, 10-bit mantissa inputs)
    max_seq_length: int = Field(2048, gt=0)
    trust_remote_code: bool = False


class FieldMap(Section):
    """Column names of a local table (or a hub dataset) mapped onto the normalised record; a dotted path
    ("choices.text") reaches into a nested field."""

    id: str | None = None  # None: ids are made from the row number
    context: str | None = None  # None: questions without a passage
    question: str = "question"
    options: str | list[str] = "options"  # one list column, or one column per letter
    answer: str = "answer"
    answer_format: Literal["letter", "index0", "index1", "text"] = "letter"  # text: the option's own text
    source: str | None = None  # a column naming the sub-source (e.g. middle/high); else the file name


class PrepareParams(Section):
    source: Literal["hf", "race", "quality", "table"] = "hf"
    # hf: dataset id; race: RACE.tar.gz or the extracted folder; quality/table: a file, where
    # "{split}" in the path is replaced by train_split / eval_split (without it, one file is split).
    path: str = "ehovy/race"
    config: str | None = "all"  # hf: dataset config; race: all | middle | high
    train_split: str = "train"
    eval_split: str = "test"
    n_train: int | None = Field(2000, gt=0)  # None: every item
    n_eval: int | None = Field(300, gt=0)
    seed: int = 42
    max_prompt_tokens: int = Field(1024, gt=0)  # longer prompts are dropped and counted, never cut
    n_shots: int = Field(0, ge=0, le=8)  # solved train questions shown before each completion-variant question
    fields: FieldMap = FieldMap(id="example_id", context="article")


class EvalParams(Section):
    """Shared by baseline and evaluate, so both models answer under identical settings."""

    mode: Literal["generate", "loglik", "both"] = "both"  # loglik: option log-likelihood, no generation
    engine: Literal["auto", "hf", "fast"] = "auto"  # fast: the project's compiled static-cache decode; auto: fast on CUDA
    compile_prefill: bool = False  # fast engine: the prefill compiled too (half its time at 1B, ~30 s more warm-up)
    # SDPA's cuDNN backend for the log-likelihood passes and the prefill (patches.attention_backends). Off: SDPA's
    # memory-efficient kernels, which build no per-shape plan; on an H100 that was no faster (benchmarks/README.md)
    cudnn_attention: bool = True
    variants: list[str] = ["direct", "cot"]
    batch_size: int = Field(32, gt=0)
    max_new_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0

    @field_validator("engine", mode="before")
    @classmethod
    def engine_renamed(cls, engine):
        return refuse_renamed_engine("eval.engine", engine)

    @model_validator(mode="after")
    def fast_engine_has_no_top_p(self):
        if self.engine == "fast" and self.top_p < 1:
            raise ValueError("eval.engine=fast samples from the full distribution: set eval.top_p to 1.0, "
                             "or eval.engine to hf or auto")
        return self

    @field_validator("variants")
    @classmethod
    def known_variants(cls, variants):
        if not variants:
            raise ValueError(f"no prompt variants; choose from {list(VARIANTS)}")
        for variant in variants:
            check_variant(variant)
        return variants


class LoraParams(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainParams(Section):
    variant: str = "cot"  # the prompt the policy is trained on
    # given: options in the data's order | per_completion: each completion of a group sees its question's options in
    # its own random order, so choosing by position earns nothing (training.shuffle_options_per_row)
    option_order: Literal["given", "per_completion"] = "given"
    finetune: Literal["lora", "full"] = "lora"  # full: every weight trains (models/adapter then holds the whole model)
    lora: LoraParams = LoraParams()
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(0.1, gt=0)
    optim: str = "adamw_torch"  # adamw_8bit saves memory on CUDA (needs bitsandbytes)
    max_steps: int = Field(300, gt=0)
    # completions per device per micro-step; with shared_prompts a micro-step of 16 is two rows, and larger micro-steps
    # ran faster at the 1B shape (benchmarks/README.md, 2026-12-04)
    per_device_train_batch_size: int = Field(16, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_generations: int = Field(8, ge=2)  # completions per prompt (the GRPO group)
    max_completion_length: int = Field(512, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.04, ge=0)  # KL coefficient; 0 drops the reference model and the KL curve
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, gt=0)  # PPO-style updates per generation batch
    epsilon: float = Field(0.2, gt=0)  # clipping range
    reward_weights: dict[str, float] = {"correct": 1.0, "format": 0.2}
    gradient_checkpointing: bool = True
    use_vllm: bool = False  # TRL's vLLM rollouts if vllm is installed, else rollout_engine (untested here)
    # rollouts: fast (the project's StaticGenerator: eval mode, static KV cache, CUDA-graph decode) |
    # hf (TRL's default, model.generate) | hf_static (TRL with transformers' static KV cache) | hf_continuous
    # (transformers' continuous batching) | auto (fast where it applies: transformers backend and top_p 1; else hf)
    rollout_engine: Literal["auto", "fast", "hf", "hf_static", "hf_continuous"] = "auto"
    grouped_attention: bool = False  # the training forward's attention: grouped-query SDPA (fast rollouts always are)
    # the policy's decoder layers compiled (torch.compile, dynamic shapes) for the training forward and backward:
    # auto compiles on CUDA with the transformers backend and the fast rollouts (training.compiles_layers)
    compile_layers: bool | Literal["auto"] = "auto"
    # SDPA's cuDNN backend for the training forward/backward and the rollouts' prefill (training.attention_backends).
    # Off: SDPA runs its memory-efficient kernels (the attention mask rules out flash). cuDNN builds an execution plan
    # (at times a kernel) for each new input shape, and with pad_to_multiple_of its gradients were NaN at step 1 on an
    # H200 (benchmarks/README.md), so the two are refused together
    cudnn_attention: bool = False
    # prompts and completions padded to a multiple of this many tokens (TRL's GRPOConfig.pad_to_multiple_of; the fast
    # rollouts pad their prompts the same way): a few shapes that recur, so the compiled layers and the rollouts'
    # prefill meet shapes they have run before, for ~3% more (masked) tokens. null pads to the longest in the batch
    pad_to_multiple_of: int | None = Field(64, gt=0)
    # the log-prob passes (training forward/backward, reference, old policy) compute each prompt once for all of its
    # completions, one row per group (mcgrpo.shared_prompt): the same log-probs in ~a quarter of the tokens at RACE
    # lengths; transformers backend (Unsloth's trainer computes its own)
    shared_prompts: bool = True
    # how the shared-prompt passes run attention: masked (the model's attention over the whole row with a dense mask)
    # | split (two SDPA calls a layer, about a third of the pairs; fast rollouts only) | auto: split with the fast
    # rollouts, masked with rollouts that call the policy's generate (training.shared_prompt_attention)
    shared_prompt_attention: Literal["auto", "masked", "split"] = "auto"
    # fast rollouts sample from a copy of the LoRA-adapted weights with the adapters merged in, refreshed every
    # rollout: no LoRA matmuls in the decode step, for one more copy of those weights in memory
    merged_rollouts: bool = True
    num_processes: int = Field(1, gt=0)  # > 1: data-parallel GRPO under `accelerate launch`, one process per GPU
    accelerate_config: str = "configs/accelerate/ddp.yaml"  # DDP; configs/accelerate/zero2.yaml: DeepSpeed ZeRO-2
    seed: int = 42
    save_steps: int = Field(50, gt=0)
    save_total_limit: int = Field(2, gt=0)
    logging_steps: int = Field(1, gt=0)

    @field_validator("variant")
    @classmethod
    def known_variant(cls, variant):
        return check_variant(variant)

    @field_validator("rollout_engine", mode="before")
    @classmethod
    def rollout_engine_renamed(cls, engine):
        return refuse_renamed_engine("train.rollout_engine", engine)

    @property
    def rule_reward_weights(self) -> dict[str, float]:
        """reward_weights without the learned reward and the training-only ones (rewards.TRAINING_ONLY): the weights
        of the rule rewards that score a completion alone, used wherever a reward is shown (plots, `mcgrpo score`,
        the chat page); training adds the others on top."""
        return {name: weight for name, weight in self.reward_weights.items()
                if name in REWARDS and name not in TRAINING_ONLY}

    @field_validator("reward_weights")
    @classmethod
    def known_rewards(cls, weights):
        unknown = [k for k in weights if k not in REWARDS and k != LEARNED_REWARD]
        if unknown:
            raise ValueError(f"unknown reward(s) {unknown}; choose from {[*REWARDS, LEARNED_REWARD]}")
        if not any(weights.values()):
            raise ValueError("every reward weight is 0: nothing to learn from")
        return weights

    @model_validator(mode="after")
    def fast_rollouts_have_no_top_p(self):
        if self.rollout_engine == "fast" and self.top_p < 1:
            raise ValueError("train.rollout_engine=fast samples from the full distribution: set train.top_p to 1.0, "
                             "or use rollout_engine hf")
        return self

    @model_validator(mode="after")
    def constrained_answers_need_fast_rollouts(self):
        if self.variant == PICK_VARIANT and (self.rollout_engine not in ("auto", "fast") or self.use_vllm):
            raise ValueError(f"train.variant={PICK_VARIANT} decodes each answer under a constraint (one option, whole) "
                             "that only the project's rollouts apply: set train.rollout_engine to auto or fast, and "
                             "train.use_vllm to false")
        return self

    @model_validator(mode="after")
    def cudnn_attention_unpadded(self):
        if self.cudnn_attention and self.pad_to_multiple_of:
            raise ValueError("train.cudnn_attention=true with train.pad_to_multiple_of set gave NaN gradients at the "
                             "first step (H200, benchmarks/README.md): set train.pad_to_multiple_of to null to try "
                             "cuDNN's attention, or train.cudnn_attention to false")
        return self

    @model_validator(mode="after")
    def whole_groups(self):
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps ({batch}) must be a multiple "
                f"of num_generations ({self.num_generations}), so every prompt's group is complete"
            )
        return self


class RewardModelParams(Section):
    """The learned reward: base-model answers to training questions, labelled by the rule reward."""

    n_questions: int = Field(200, gt=0)  # taken from the start of the (already shuffled) train set
    samples_per_question: int = Field(4, gt=0)  # sampled answers per question: right and wrong ones to learn from
    variant: str = "cot"
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, gt=0)
    batch_size: int = Field(32, gt=0)
    classifier: Literal["logistic", "gbdt"] = "logistic"
    C: float = Field(1.0, gt=0)  # inverse regularisation strength (logistic)
    max_features: int = Field(5000, gt=0)  # TF-IDF vocabulary size
    test_size: float = Field(0.25, gt=0, lt=1)  # held-out share of questions, for ROC AUC and calibration
    min_per_class: int = Field(5, gt=0)  # fewer right (or wrong) completions than this: the stage is skipped
    seed: int = 0

    @field_validator("variant")
    @classmethod
    def known_variant(cls, variant):
        return check_variant(variant)


class PublishParams(Section):
    """The publish stage: models/publish/ (adapter or merged model + model card), uploaded when push is true."""

    push: bool = False  # upload to the Hub (token from HF_TOKEN or `hf auth login`)
    repo_id: str | None = None  # "user-or-org/name"; needed when push is true
    merge: bool = False  # publish the merged model instead of the LoRA adapter
    private: bool = True  # visibility of a repo the stage creates
    license: str = "gemma"  # the base model's license id on the Hub
    commit_message: str = "Upload GRPO fine-tuned model (mcgrpo)"

    @field_validator("repo_id")
    @classmethod
    def repo_id_shape(cls, repo_id):
        if repo_id is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
            raise ValueError(f"{repo_id!r} is not a Hub repo id; write it as user-or-org/name")
        return repo_id

    @model_validator(mode="after")
    def push_needs_repo(self):
        if self.push and not self.repo_id:
            raise ValueError("publish.push is true but publish.repo_id is not set (e.g. repo_id: you/gemma-3-1b-race-grpo)")
        return self


class ReportParams(Section):
    n_examples: int = Field(3, gt=0)  # examples per kind (improved / regressed / both wrong)
    max_example_chars: int = Field(1500, gt=0)


class Params(Section):
    model: ModelParams = ModelParams()
    prepare: PrepareParams = PrepareParams()
    eval: EvalParams = EvalParams()
    train: TrainParams = TrainParams()
    reward_model: RewardModelParams = RewardModelParams()
    publish: PublishParams = PublishParams()
    report: ReportParams = ReportParams()


def _describe(error: dict, raw: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        parent, section = raw, Params
        for part in error["loc"][:-1]:
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
            field = section.model_fields.get(part) if isinstance(section, type) else None
            section = field.annotation if field else None
        known = list(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
        hint = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known keys: {', '.join(known)})" if known else ""
        return f"{key}: unknown key{suggestion}"
    got = error.get("input")
    if isinstance(got, dict):  # a check across a section's keys: the message names them; the section is noise
        return f"{key or 'params'}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key}: {error['msg']} (got {got!r})"


def parse_params(raw: dict, name: str = PARAMS_FILE) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{name}: expected a mapping of sections ({', '.join(Params.model_fields)})")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = "\n  ".join(_describe(e, raw) for e in err.errors())
        raise UserError(f"{name}: invalid parameters; fix these keys:\n  {lines}") from None


def read_raw_params(path=PARAMS_FILE) -> dict:
    """params.yaml as written (comments aside), for code that changes it and writes it back (write_params)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; run from the project root (where dvc.yaml is)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from None


def load_params(path=PARAMS_FILE) -> Params:
    return parse_params(read_raw_params(path), str(path))


def deep_merge(base: dict, overrides: dict) -> dict:
    """overrides into base, section by section (a nested mapping merges; anything else replaces)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = deep_merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def override(raw: dict, assignment: str) -> dict:
    """raw params with one `dvc exp run -S` style assignment applied: "section.key=value", or a dotted path into
    a nested mapping ("train.reward_weights.format=0"); the value is read as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or "." not in key:
        raise UserError(f"{assignment!r}: expected section.key=value (e.g. train.learning_rate=1e-5)")
    nested = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return deep_merge(raw, nested)


def write_params(path, raw: dict) -> Params:
    """Validate raw params, then write them to path atomically: a bad value fails here, naming the key, and
    leaves the file as it was."""
    from mcgrpo.fileio import write_text

    params = parse_params(raw, str(path))
    write_text(path, yaml.safe_dump(raw, sort_keys=False))
    return params
