import csv
import json
import os
import shutil

import pytest
import torch

from mcgrpo.data.synthetic import make_synthetic_mc
from mcgrpo.errors import UserError
from mcgrpo.fileio import write_jsonl
from mcgrpo.modeling import load_model
from mcgrpo.params import TrainParams
from mcgrpo.rewards import LETTERS
from mcgrpo.training import (
    FastRollouts,
    grpo_config,
    grpo_dataset,
    longest_prompt_tokens,
    prepare_checkpoints,
    run_fingerprint,
    train_grpo,
    with_base_choices,
)

pytestmark = pytest.mark.slow


def tiny_train_params(**kw):
    return TrainParams(**{"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4,
                          "gradient_accumulation_steps": 1, "num_generations": 2, "max_completion_length": 8,
                          "warmup_steps": 0, "learning_rate": 1e-3, "gradient_checkpointing": False,
                          "lora": {"r": 4, "alpha": 8}, **kw})


def run(tiny_model_params, tmp_path, tp, records, reward_model_file=None, engine="hf", callbacks=()):
    full = tp.finetune == "full"
    model, tok, peft_config = load_model(tiny_model_params, lora=None if full else tp.lora, seed=tp.seed,
                                         full_finetune=full)
    write_jsonl(tmp_path / "train.jsonl", records)
    return train_grpo(model, tok, peft_config, records, tp, checkpoints=tmp_path / "ckpt",
                      adapter_out=tmp_path / "adapter", live_dir=tmp_path / "live",
                      fingerprint=run_fingerprint(tp, tiny_model_params, tmp_path / "train.jsonl", reward_model_file),
                      bf16=False, reward_model_file=reward_model_file, engine=engine, callbacks=callbacks)


def steps_logged(live_dir):
    with open(live_dir / "plots" / "metrics" / "reward.tsv") as f:
        return [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")]


def test_grpo_trains_saves_adapter_and_resumes(tiny_model_params, tmp_path):
    records = make_synthetic_mc(8, seed=2)
    tp = tiny_train_params()
    summary = run(tiny_model_params, tmp_path, tp, records)
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 0
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert steps_logged(tmp_path / "live") == [1, 2, 3, 4]
    # where a step's time goes: every phase was timed (a wrapper that never fired would leave a 0 or a negative)
    phases = summary["step_phases_s_last10"]
    assert set(phases) == {"rollouts", "rewards_and_reference", "policy_forward_backward", "optimizer"}
    assert all(seconds > 0 for seconds in phases.values()), phases
    for name in ("reward_std.tsv", "kl.tsv", "loss.tsv", "completions/mean_length.tsv"):
        assert (tmp_path / "live" / "plots" / "metrics" / name).exists(), name

    # As if the run died after saving step 2: the rerun resumes there and finishes the same 4 steps.
    shutil.rmtree(tmp_path / "ckpt" / "checkpoint-4")
    summary = run(tiny_model_params, tmp_path, tp, records)
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2 and summary["train_runtime_s"] > 0
    assert steps_logged(tmp_path / "live") == [1, 2, 3, 4]  # no duplicated steps in the curves
    finished = summary

    # Rerunning a finished run (dvc repro --force) exports the last checkpoint: no step past max_steps,
    # and the same adapter bytes.
    def adapter_files():
        return {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}

    before = adapter_files()
    summary = run(tiny_model_params, tmp_path, tp, records)
    assert summary == finished  # the run's own figures (runtime, resume point), not zeros from a re-count
    assert adapter_files() == before

    # The adapter loads back onto the base model for evaluation.
    model, _, _ = load_model(tiny_model_params, adapter_dir=tmp_path / "adapter")
    assert not hasattr(model, "peft_config")  # merged for fast inference


def test_full_fine_tuning_trains_every_weight_and_loads_back(tiny_model_params, tmp_path):
    from safetensors.torch import load_file
    from test_reward_model import labelled_rows

    from mcgrpo.params import RewardModelParams
    from mcgrpo.reward_model import fit_reward_model, save
    from mcgrpo.training import training_backend

    # the learned reward scores every completion differently, so the random tiny model gets non-zero advantages
    save(tmp_path / "rm.joblib", fit_reward_model(labelled_rows(), RewardModelParams())[0])
    records = [{**r, "source": "synthetic"} for r in make_synthetic_mc(8, seed=2)]
    tp = tiny_train_params(finetune="full", max_steps=2, learning_rate=1e-4,
                           reward_weights={"correct": 1.0, "learned": 1.0})
    summary = run(tiny_model_params, tmp_path, tp, records, reward_model_file=tmp_path / "rm.joblib")
    out = tmp_path / "adapter"
    assert summary["steps"] == 2 and not (out / "adapter_config.json").exists()
    trained = load_file(out / "model.safetensors")
    base, _, _ = load_model(tiny_model_params)
    changed = {k for k, v in base.state_dict().items() if k in trained and not torch.equal(v, trained[k])}
    assert any("embed" in k for k in changed) and any("mlp" in k for k in changed)  # not an adapter: every weight
    tuned, _, _ = load_model(tiny_model_params, adapter_dir=out)  # evaluate/publish/chat load it as it is
    assert all(torch.equal(tuned.state_dict()[k], trained[k]) for k in changed)
    # Rerunning the finished run exports its last checkpoint, a whole model again.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run(tiny_model_params, tmp_path, tp, records, reward_model_file=tmp_path / "rm.joblib")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(UserError, match="train.finetune=full trains through transformers"):
        training_backend("unsloth", tp)
    assert training_backend("auto", tp) == "transformers"


def test_fingerprint_covers_backend_and_data(tmp_path, tiny_model_params):
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    tp = tiny_train_params()
    base = run_fingerprint(tp, tiny_model_params, data)
    assert run_fingerprint(tp, tiny_model_params.model_copy(update={"backend": "unsloth"}), data) != base
    assert run_fingerprint(tiny_train_params(learning_rate=0.5), tiny_model_params, data) != base
    data.write_text("{}\n{}\n")
    assert run_fingerprint(tp, tiny_model_params, data) != base


def test_changed_params_never_resume_a_stale_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (ckpt / "run.json").write_text(json.dumps({"train": {"learning_rate": 1}}))
    assert prepare_checkpoints(ckpt, {"train": {"learning_rate": 1}}).name == "checkpoint-2"
    assert prepare_checkpoints(ckpt, {"train": {"learning_rate": 2}}) is None
    assert not (ckpt / "checkpoint-2").exists()


def test_hybrid_training_uses_the_learned_reward(tiny_model_params, tmp_path):
    from test_reward_model import labelled_rows

    from mcgrpo.params import RewardModelParams
    from mcgrpo.reward_model import fit_reward_model, save

    artifact, _, _ = fit_reward_model(labelled_rows(), RewardModelParams())
    save(tmp_path / "rm.joblib", artifact)
    records = [{**r, "source": "synthetic"} for r in make_synthetic_mc(8, seed=2)]
    tp = tiny_train_params(max_steps=2, reward_weights={"correct": 1.0, "learned": 0.5})
    summary = run(tiny_model_params, tmp_path, tp, records, reward_model_file=tmp_path / "rm.joblib")
    assert summary["steps"] == 2
    with open(tmp_path / "live" / "plots" / "metrics" / "rewards" / "learned" / "mean.tsv") as f:
        learned = [float(r["mean"]) for r in csv.DictReader(f, delimiter="\t")]
    assert len(learned) == 2 and all(0 < x < 1 for x in learned)  # probabilities, logged per step
    # A different reward model is a different run: never resumed.
    fingerprint = run_fingerprint(tp, tiny_model_params, tmp_path / "train.jsonl", tmp_path / "rm.joblib")
    save(tmp_path / "rm.joblib", fit_reward_model(labelled_rows(seed=5), RewardModelParams())[0])
    assert run_fingerprint(tp, tiny_model_params, tmp_path / "train.jsonl", tmp_path / "rm.joblib") != fingerprint


def check_fast_rollouts_follow_the_policy(model_params, tmp_path, pad_to_multiple_of=None):
    """At a near-zero temperature the fast rollouts must be the policy's greedy tokens, exactly as
    model.generate gives them for each prompt alone, cut after the first EOS as TRL cuts them, also after
    the LoRA weights changed in place (as the optimizer changes them; on CUDA the decode step is a graph
    recorded before the change); and the policy goes back to train mode afterwards. pad_to_multiple_of: the
    prompts padded further on the left (train.pad_to_multiple_of), which must change no token."""
    from trl import GRPOTrainer

    from mcgrpo.prompts import build_messages
    from mcgrpo.training import reward_functions

    records = make_synthetic_mc(6, seed=3)
    tp = tiny_train_params(temperature=1e-6, max_completion_length=40, gradient_checkpointing=True,
                           per_device_train_batch_size=6, num_generations=2)
    model, tok, peft_config = load_model(model_params, lora=tp.lora, seed=tp.seed)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(tp), args=grpo_config(tp, tmp_path, False, "fast"),
                          train_dataset=grpo_dataset(records, tp.variant), processing_class=tok, peft_config=peft_config)
    longest = longest_prompt_tokens(tok, records, tp.variant)
    rollouts = FastRollouts(longest, pad_to_multiple_of=pad_to_multiple_of)
    prompts = [build_messages(r, tp.variant) for r in records]
    trainer.model.train()
    first = rollouts(prompts, trainer)["completion_ids"]
    if pad_to_multiple_of:  # the padding was exercised: the longest prompt is no multiple, the rollout cache one
        assert longest % pad_to_multiple_of and rollouts.generator.max_length == \
            longest + -longest % pad_to_multiple_of + tp.max_completion_length
    with torch.no_grad():  # an optimizer step's worth of change, in place
        torch.manual_seed(0)
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5 * torch.randn_like(param))
    second = rollouts(prompts, trainer)["completion_ids"]
    assert second != first  # the new weights were used
    # The untrained tiny model never says <end_of_turn>: make a token it does say an EOS, so the cut is exercised.
    trainer.eos_token_ids = [*trainer.eos_token_ids, second[0][5]]
    out = rollouts(prompts, trainer)
    assert trainer.model.training and out["logprobs"] is None
    eos = set(trainer.eos_token_ids)
    assert any(len(ids) < tp.max_completion_length and ids[-1] in eos for ids in out["completion_ids"])
    trainer.model.eval()
    device = next(trainer.model.parameters()).device
    for prompt_ids, completion in zip(out["prompt_ids"], out["completion_ids"], strict=True):
        with torch.no_grad():
            new = trainer.model.generate(torch.tensor([prompt_ids], device=device), max_new_tokens=tp.max_completion_length,
                                         do_sample=False, eos_token_id=list(eos), pad_token_id=tok.pad_token_id)
        new = new[0, len(prompt_ids):].tolist()
        end = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
        assert completion == new[:end]


def test_fast_rollouts_are_the_policys_own_tokens(tiny_model_params, tmp_path):
    check_fast_rollouts_follow_the_policy(tiny_model_params, tmp_path, pad_to_multiple_of=64)


def test_grpo_with_fast_rollouts_trains_and_resumes(tiny_model_params, tmp_path):
    from transformers import TrainerCallback

    during_steps = []

    class RecordSdpa(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            during_steps.append((torch.backends.cuda.cudnn_sdp_enabled(), os.environ["TORCHINDUCTOR_CACHE_DIR"]))

    records = make_synthetic_mc(8, seed=2)
    tp = tiny_train_params(rollout_engine="fast", gradient_checkpointing=True, cudnn_attention=False,
                           pad_to_multiple_of=32)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    summary = run(tiny_model_params, tmp_path, tp, records, engine="fast", callbacks=(RecordSdpa(),))
    assert summary["steps"] == 4 and steps_logged(tmp_path / "live") == [1, 2, 3, 4]
    assert summary["shared_prompts"]  # the default: the log-prob passes ran one row per prompt
    # train.cudnn_attention false: SDPA's cuDNN backend is off for the run's steps only, and inductor's on-disk
    # cache (which would hand back graphs compiled under the other choice) is a folder of this choice's own
    assert [cudnn for cudnn, _ in during_steps] == [False] * 4 and torch.backends.cuda.cudnn_sdp_enabled()
    assert all(folder.endswith(os.sep + "sdpa-no-cudnn") for _, folder in during_steps)
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == cache_dir
    # the rollouts' share of a step is reported (the compiling first call left out)
    assert 0 < summary["rollout_time_s_last10"] < summary["step_time_s_last10"]
    shutil.rmtree(tmp_path / "ckpt" / "checkpoint-4")
    summary = run(tiny_model_params, tmp_path, tp, records, engine="fast")
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2


def test_input_grad_hooks_removed_for_rollouts_and_one_put_back(tiny_model_params):
    from mcgrpo.patches import input_grad_hooks_removed

    model, _, _ = load_model(tiny_model_params)
    model.requires_grad_(False)  # as under LoRA: only the hook makes the embeddings' output require grad
    for _ in range(3):  # what TRL does around every log-prob pass: one more hook each time
        model.gradient_checkpointing_disable()
        model.gradient_checkpointing_enable()
    embeddings = model.get_input_embeddings()
    assert len(embeddings._forward_hooks) == 3
    with input_grad_hooks_removed(model):
        assert len(embeddings._forward_hooks) == 0
        assert not embeddings(torch.tensor([[1, 2]])).requires_grad
    assert len(embeddings._forward_hooks) == 1
    assert embeddings(torch.tensor([[1, 2]])).requires_grad  # the hook put back still does its job


def test_grpo_config_takes_every_shared_train_param_by_name(tmp_path):
    import dataclasses

    from trl import GRPOConfig

    from mcgrpo.training import NOT_GRPO_FIELDS

    tp = TrainParams(learning_rate=3e-5, beta=0.1, epsilon=0.3, num_iterations=2, scale_rewards="batch", top_p=1.0,
                     max_grad_norm=0.5, save_total_limit=3, seed=7, reward_weights={"correct": 1.0, "format": 0.0,
                                                                                    "tags": 0.5})
    config = grpo_config(tp, tmp_path, False, "hf_static")
    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    shared = [name for name in TrainParams.model_fields if name in trl_fields - NOT_GRPO_FIELDS]
    assert len(shared) >= 20 and all(getattr(config, name) == getattr(tp, name) for name in shared)
    assert config.reward_weights == [1.0, 0.5]  # TRL pairs them by position with the non-zero rewards
    assert config.cache_implementation == "static" and not config.use_vllm
    # every other TrainParams field is the project's own, not a GRPOConfig setting left behind by accident
    assert set(TrainParams.model_fields) - set(shared) == NOT_GRPO_FIELDS


def test_hf_rollouts_agree_with_the_training_forward_past_the_sliding_window(tiny_model_params):
    # TRL's own rollouts (rollout_engine=hf) sample with model.generate on left-padded prompts; the loss scores
    # those tokens with one forward pass over prompt + completion (no cache, no position ids). A token sampled
    # from logits the forward pass would not give is what a KL spike looks like (README: When things go wrong):
    # check they agree when prompts and completions cross the tiny model's 128-token sliding window.
    from mcgrpo.generation import encode_prompts, left_pad
    from mcgrpo.prompts import render_prompt

    model, tok, _ = load_model(tiny_model_params)
    with torch.no_grad():  # random init attends almost uniformly, blind to positions: sharpen it so they matter
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.fill_(3.0)
            layer.self_attn.k_norm.weight.fill_(3.0)
    base = make_synthetic_mc(3, seed=4)
    records = [{**r, "context": r["context"] * k} for r, k in zip(base, (1, 4, 9))]
    prompts = encode_prompts(tok, [render_prompt(tok, r, "completion_option") for r in records])
    assert min(map(len, prompts)) < 128 < max(map(len, prompts))
    ids, mask = left_pad(prompts, tok.pad_token_id, torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=48, min_new_tokens=48, remove_invalid_values=True, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        completion = out.sequences[:, ids.shape[1]:]
        sampled = torch.stack(out.logits, 1).log_softmax(-1).gather(2, completion[..., None])[..., 0]
        full_mask = torch.cat([mask, torch.ones_like(completion)], 1)
        logits = model(input_ids=out.sequences, attention_mask=full_mask).logits[:, ids.shape[1] - 1:-1]
        scored = logits.log_softmax(-1).gather(2, completion[..., None])[..., 0]
    assert torch.isfinite(scored).all()
    assert (scored - sampled).abs().max() < 1e-3


def test_per_completion_option_order_reaches_trl_and_trains(tiny_model_params, tmp_path, monkeypatch):
    """What TRL's own dataloader hands its rollouts: each copy of a question shows its options in its own order,
    the answer letter follows the gold option, and the prompt lists the options as the row does; with `given`
    every copy is the data's row. A short run trains on it. The vLLM engine, which samples a whole group from
    its first prompt, is refused."""
    import importlib.util

    from trl import GRPOTrainer

    from mcgrpo.prompts import trainer_prompt
    from mcgrpo.training import reward_functions, rollout_engine

    records = make_synthetic_mc(8, seed=4)
    original = {(r["context"], r["question"]): r for r in records}
    assert len(original) == len(records)
    variant = "completion_option"
    tp = tiny_train_params(variant=variant, option_order="per_completion", num_generations=4,
                           per_device_train_batch_size=8)
    orders_seen = {}
    for option_order in ("given", "per_completion"):
        model, tok, peft_config = load_model(tiny_model_params, lora=tp.lora, seed=tp.seed)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(tp),
                              args=grpo_config(tp, tmp_path / option_order, False, "hf"),
                              train_dataset=grpo_dataset(records, variant, option_order=option_order),
                              processing_class=tok, peft_config=peft_config)
        batch = next(iter(trainer.get_train_dataloader()))
        assert len(batch) == 8
        orders_seen[option_order] = []
        for start in range(0, len(batch), tp.num_generations):
            group = batch[start:start + tp.num_generations]
            source = original[(group[0]["context"], group[0]["question"])]
            gold = source["options"][LETTERS.index(source["answer"])]
            for row in group:
                assert (row["context"], row["question"]) == (source["context"], source["question"])  # one question
                assert sorted(row["options"]) == sorted(source["options"])
                assert row["options"][LETTERS.index(row["answer"])] == gold
                assert row["prompt"] == trainer_prompt(row, variant)
                if option_order == "given":
                    assert row["options"] == source["options"] and row["answer"] == source["answer"]
            orders_seen[option_order].append({tuple(row["options"]) for row in group})
    # two groups of 4 copies, 4 options each: that both groups show one order throughout has odds (1/24)^6
    assert any(len(orders) > 1 for orders in orders_seen["per_completion"])

    summary = run(tiny_model_params, tmp_path / "run", tp, records)
    assert summary["steps"] == 4

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else
                        real_find_spec(name, *a))
    with pytest.raises(UserError, match="option_order"):
        rollout_engine(tiny_train_params(option_order="per_completion", use_vllm=True), "transformers")
    assert rollout_engine(tiny_train_params(use_vllm=True), "transformers") == "vllm"


def test_base_choice_column_is_the_base_models_loglik_choice_and_trains(tiny_model_params, tmp_path):
    """with_base_choices labels each question with the option the untrained model's log-likelihood ranks first (as
    the baseline scores it); the per-completion shuffle keeps that label with its option; GRPO trains on it."""
    from mcgrpo.loglik import option_logprobs

    records = make_synthetic_mc(8, seed=5)
    model, tok, _ = load_model(tiny_model_params, lora=None, seed=0)
    labelled, agree = with_base_choices(model, tok, records, batch_size=8)
    expected = [r["options"][max(range(len(s)), key=s.__getitem__)] for r, s in
                zip(records, option_logprobs(model, tok, records, 8))]
    assert [r["base_choice"] for r in labelled] == expected
    gold = [r["options"][LETTERS.index(r["answer"])] for r in records]
    assert agree == pytest.approx(sum(c == g for c, g in zip(expected, gold)) / len(records))
    rows = grpo_dataset(labelled, "completion_option", option_order="per_completion")[:8]
    assert rows["base_choice"] == expected and all(c in o for c, o in zip(rows["base_choice"], rows["options"]))

    tp = tiny_train_params(variant="completion_option", option_order="per_completion", max_steps=2,
                           reward_weights={"correct": 1.0, "base_choice": 1.0})
    summary = run(tiny_model_params, tmp_path, tp, labelled)
    assert summary["steps"] == 2
    with open(tmp_path / "live" / "plots" / "metrics" / "rewards" / "base_choice_reward" / "mean.tsv") as f:
        logged = [float(r["mean"]) for r in csv.DictReader(f, delimiter="\t")]
    assert len(logged) == 2 and all(0 <= x <= 1 for x in logged)


def test_completion_pick_rollouts_are_options_whole_and_train(tiny_model_params, tmp_path, monkeypatch):
    """completion_pick trains through the fast rollouts under the options' constraint: every sampled completion is
    one of its question's options with its line end, so every one is in format; with each completion's options
    shuffled (the prompt shows none, so it stays the same) a short run trains. Any other backend is refused."""
    from mcgrpo.rewards import PICK_VARIANT, follows_format

    records = make_synthetic_mc(8, seed=5)
    tp = tiny_train_params(variant=PICK_VARIANT, option_order="per_completion", max_completion_length=12)
    seen = []
    original_call = FastRollouts.__call__

    def recording_call(self, prompts, trainer):
        out = original_call(self, prompts, trainer)
        tok = trainer.processing_class
        seen.extend((p, tok.decode(ids, skip_special_tokens=True)) for p, ids in zip(prompts, out["completion_ids"]))
        return out

    monkeypatch.setattr(FastRollouts, "__call__", recording_call)
    summary = run(tiny_model_params, tmp_path, tp, records, engine="fast")
    assert summary["steps"] == 4 and len(seen) == 4 * tp.per_device_train_batch_size
    options_of = {grpo_dataset([r], PICK_VARIANT)[0]["prompt"]: r["options"] for r in records}
    for prompt, text in seen:
        assert text.endswith("\n") and text.strip() in options_of[prompt], text
        assert follows_format(text, PICK_VARIANT, options_of[prompt])
    from mcgrpo.training import rollout_engine

    with pytest.raises(UserError, match="transformers backend"):
        rollout_engine(tp, "unsloth")


def lora_policy_and_batches(model_params, device="cpu"):
    """A LoRA policy with gradient checkpointing as TRL trains it, and two left-padded batches of other lengths."""
    from peft import get_peft_model

    from mcgrpo.params import LoraParams

    torch.manual_seed(0)
    model, _, peft_config = load_model(model_params, lora=LoraParams(r=4, alpha=8), seed=0)
    model = get_peft_model(model, peft_config)
    for name, param in model.named_parameters():  # LoRA B starts at zero: make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    batches = []
    for length, padded in ((40, 7), (29, 3)):
        ids = torch.randint(5, model.config.vocab_size, (3, length), device=device)
        mask = torch.ones_like(ids)
        mask[0, :padded] = 0
        batches.append((ids, mask))
    return model, batches


def loss_and_grads(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = logits.float().log_softmax(-1)[..., 3].mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def check_compiled_layers_train_as_eager(model_params, device, backend, tol):
    """compile_decoder_layers gives the training forward and backward (checkpointed, LoRA) the eager loss and LoRA
    gradients at two batch lengths, and the no-grad reference pass (adapters disabled) the eager logits."""
    from mcgrpo.training import compile_decoder_layers

    eager, batches = lora_policy_and_batches(model_params, device)
    compiled, _ = lora_policy_and_batches(model_params, device)
    compile_decoder_layers(compiled, backend=backend)
    for ids, mask in batches:
        want_loss, want = loss_and_grads(eager, ids, mask)
        loss, grads = loss_and_grads(compiled, ids, mask)
        assert grads.keys() == want.keys() and len(grads) > 0 and all("lora_" in name for name in grads)
        torch.testing.assert_close(loss, want_loss, atol=tol, rtol=tol)
        for name in want:
            torch.testing.assert_close(grads[name], want[name], atol=tol, rtol=tol, msg=name)
    ids, mask = batches[0]
    with torch.no_grad(), eager.disable_adapter(), compiled.disable_adapter():
        torch.testing.assert_close(compiled(input_ids=ids, attention_mask=mask).logits,
                                   eager(input_ids=ids, attention_mask=mask).logits, atol=tol, rtol=tol)
    return compiled


def test_compiled_decoder_layers_train_as_eager_and_yield_to_rollouts(tiny_model_params):
    """Traced by Dynamo on the CPU (the eager backend: inductor's fused kernels are the GPU test's); the fast
    rollouts' generator routes the layers for its own calls and gives the compiled forward back."""
    from mcgrpo.fast_generation import StaticGenerator

    compiled = check_compiled_layers_train_as_eager(tiny_model_params, "cpu", "eager", 1e-5)
    layers = compiled.get_base_model().get_decoder().layers
    forwards = [vars(layer)["forward"] for layer in layers]
    generator = StaticGenerator(compiled, batch_size=2, max_length=24, compile=False)
    compiled.eval()
    ids = torch.randint(5, 100, (2, 8))
    generator.generate(ids, torch.ones_like(ids), max_new_tokens=4, eos_token_ids=[1], pad_token_id=0)
    assert [vars(layer)["forward"] for layer in layers] == forwards


def test_compile_layers_param_applies_where_it_can(monkeypatch):
    from mcgrpo.training import compiles_layers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compiles_layers(TrainParams(), "transformers", "fast")
    assert not compiles_layers(TrainParams(), "transformers", "hf")  # TRL's rollouts: the layers stay eager
    assert not compiles_layers(TrainParams(), "unsloth", "hf")
    assert not compiles_layers(TrainParams(compile_layers=False), "transformers", "fast")
    with pytest.raises(UserError, match="train.compile_layers=true needs the transformers backend and the fast"):
        compiles_layers(TrainParams(compile_layers=True), "transformers", "hf_static")
    assert compiles_layers(TrainParams(shared_prompt_attention="split"), "transformers", "fast")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compiles_layers(TrainParams(compile_layers=True, shared_prompt_attention="split"), "transformers", "fast")
    assert not compiles_layers(TrainParams(), "transformers", "fast")  # auto: never on a CPU
    assert compiles_layers(TrainParams(compile_layers=True), "transformers", "fast")


def test_shared_prompt_attention_auto_is_split_where_the_rollouts_are_the_projects():
    from mcgrpo.training import shared_prompt_attention

    assert shared_prompt_attention(TrainParams(), "fast") == "split"
    for engine in ("hf", "hf_static", "hf_continuous"):  # these call the policy's generate: split would reach it
        assert shared_prompt_attention(TrainParams(), engine) == "masked"
    assert shared_prompt_attention(TrainParams(shared_prompt_attention="masked"), "fast") == "masked"
    assert shared_prompt_attention(TrainParams(shared_prompt_attention="split"), "hf") == "split"  # refused later
