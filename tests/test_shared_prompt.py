"""train.shared_prompts: each prompt computed once for its completions gives TRL's log-probs, entropies and
gradients (float32, the tiny Gemma 3, whose sliding window is 128 tokens, with prompts past it)."""

import itertools
import json

import pytest
import torch

from mcgrpo.modeling import load_model
from mcgrpo.shared_prompt import IGNORE, pack_shared_prompts, prompt_groups, shuffle_keeping_prompts_together

pytestmark = pytest.mark.slow

COMPLETION = 12
PROMPT_LENGTHS = (150, 40, 200)  # one past the sliding window, one short, one far past it
TWO_ROW_LENGTHS = (PROMPT_LENGTHS, (150, 40, 290))  # shared parts of 256 and 320 tokens: compiled graphs meet both
OWNER = [0, 1, 0, 2, 0, 2]  # each row's prompt: groups of 3, 1 and 2 completions, rows interleaved
COMPLETION_LENGTHS = [12, 5, 1, 12, 9, 7]  # completions cut short by an EOS leave padding after it


def trl_rows(vocab: int, pad: int, seed: int = 0, prompt_lengths=PROMPT_LENGTHS):
    """TRL's layout: each row a left-padded prompt then its completion, right-padded."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (n,), generator=gen) for n in prompt_lengths]
    width = max(prompt_lengths)
    ids = torch.full((len(OWNER), width + COMPLETION), pad)
    mask = torch.zeros_like(ids)
    for row, (p, n) in enumerate(zip(OWNER, COMPLETION_LENGTHS)):
        ids[row, width - len(prompts[p]):width] = prompts[p]
        ids[row, width:width + n] = torch.randint(5, vocab, (n,), generator=gen)
        mask[row, width - len(prompts[p]):width + n] = 1
    return ids, mask


def test_packing_puts_each_prompt_once_and_scores_every_completion_token():
    ids, mask = trl_rows(vocab=100, pad=0)
    width = ids.shape[1] - COMPLETION
    assert prompt_groups(ids[:, :width], mask[:, :width]) == [[0, 2, 4], [1], [3, 5]]
    batch = pack_shared_prompts(ids, mask, COMPLETION, pad_token_id=0, multiple=64)
    # one row per prompt: all of it but its last token (left-padded to the longest, 199, rounded up to 256), then
    # a slot of COMPLETION tokens per completion of the largest group (3)
    assert (batch.shared, batch.slots, batch.segment_length) == (256, 3, COMPLETION)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.segments.shape == (3, 256 + 3 * COMPLETION)
    assert batch.index.shape == (6, COMPLETION)
    flat = {name: getattr(batch, name).flatten() for name in ("input_ids", "position_ids", "segments",
                                                               "shift_labels", "attention_mask")}
    for row, (p, n) in enumerate(zip(OWNER, COMPLETION_LENGTHS)):
        at = batch.index[row]
        prompt = ids[row, width - PROMPT_LENGTHS[p]:width]
        # the segment scores the row's completion tokens, and nothing past its end
        want = torch.where(mask[row, width:] == 1, ids[row, width:], IGNORE)
        assert torch.equal(flat["shift_labels"][at], want)
        # it starts with the prompt's last token and goes on with the completion, at the row's own positions
        assert flat["input_ids"][at[0]] == prompt[-1]
        assert torch.equal(flat["input_ids"][at[1:]], ids[row, width:-1])
        assert torch.equal(flat["position_ids"][at], torch.arange(len(prompt) - 1, len(prompt) - 1 + COMPLETION))
        assert len(set(flat["segments"][at].tolist())) == 1 and flat["segments"][at[0]] > 0
        assert torch.equal(flat["attention_mask"][at[1:]], mask[row, width:-1])
        # the prompt's shared part is the prompt, at positions 0..P-2
        group = batch.index[row, 0] // batch.input_ids.shape[1]
        shared = batch.segments[group] == 0
        assert torch.equal(batch.input_ids[group][shared], prompt[:-1])
        assert torch.equal(batch.position_ids[group][shared], torch.arange(len(prompt) - 1))
    assert (batch.shift_labels[batch.segments <= 0] == IGNORE).all()  # the prompt and padding score nothing
    # padding (segment -1) is a valid key for padding alone, so no query row is fully masked
    assert (batch.attention_mask[batch.segments < 0] == 1).all() and (batch.segments[:, 256:] != 0).all()
    assert (batch.segments[1, 256 + COMPLETION:] == -1).all()  # the one-completion group's empty slots
    with pytest.raises(ValueError, match="no prompt token"):
        pack_shared_prompts(ids, torch.cat([torch.zeros_like(mask[:, :width]), mask[:, width:]], 1), COMPLETION, 0)


def test_shuffle_keeps_each_prompts_rows_together_and_permutes_every_column():
    ids, mask = trl_rows(vocab=100, pad=0)
    width = ids.shape[1] - COMPLETION
    batch = {"prompt_ids": ids[:, :width], "prompt_mask": mask[:, :width], "completion_ids": ids[:, width:],
             "advantages": torch.arange(6.0), "names": list("abcdef"), "num_items_in_batch": torch.tensor(7),
             "old_per_token_logps": None}
    orders = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = shuffle_keeping_prompts_together(batch)
        order = out["advantages"].long().tolist()
        orders.add(tuple(order))
        assert sorted(order) == list(range(6))
        owners = [OWNER[i] for i in order]
        assert len([o for o, _ in itertools.groupby(owners)]) == 3  # each prompt's rows in one run
        assert torch.equal(out["prompt_ids"], ids[order, :width]) and out["names"] == [list("abcdef")[i] for i in order]
        assert torch.equal(out["completion_ids"], ids[order, width:])
        assert out["num_items_in_batch"] == 7 and out["old_per_token_logps"] is None
    assert len(orders) > 5  # the prompts' order and the rows' order within a prompt are random


def lora_trainer(model_params, tmp_path, attn_implementation: str):
    from trl import GRPOTrainer

    from mcgrpo.data.synthetic import make_synthetic_mc
    from mcgrpo.params import TrainParams
    from mcgrpo.patches import install_torch_logprobs
    from mcgrpo.training import grpo_config, grpo_dataset, reward_functions

    install_torch_logprobs()  # TRL's fused LM head runs Triton's kernel, or (no Triton) the project's torch one

    tp = TrainParams(max_steps=1, per_device_train_batch_size=2, num_generations=2, gradient_checkpointing=True,
                     lora={"r": 4, "alpha": 8})
    params = model_params.model_copy(update={"attn_implementation": attn_implementation})
    model, tok, peft_config = load_model(params, lora=tp.lora, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(tp), args=grpo_config(tp, tmp_path, False, "fast"),
                          train_dataset=grpo_dataset(make_synthetic_mc(2), tp.variant), processing_class=tok,
                          peft_config=peft_config)
    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():  # LoRA B starts at zero: make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return trainer, tok


def logps_entropies_and_grads(trainer, ids, mask, batch_size):
    trainer.model.train()
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION, batch_size,
                                                                     compute_entropy=True)
    keep = mask[:, -COMPLETION:].bool()
    (logps[keep].sum() + 0.1 * entropies[keep].sum()).backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    with torch.no_grad(), trainer.model.disable_adapter():  # the reference pass, as TRL's for beta > 0
        reference, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION, batch_size)
    return logps.detach()[keep], entropies.detach()[keep], grads, reference[keep]


def check_shared_prompt_passes(trainer, tok, tol: float, attention: str = "masked", prompt_lengths=PROMPT_LENGTHS):
    """The shared-prompt passes (train.shared_prompt_attention `attention`) give the trainer's own log-probs, entropies,
    LoRA gradients and reference log-probs."""
    from mcgrpo.training import shared_prompt_passes

    ids, mask = trl_rows(trainer.model.config.vocab_size, tok.pad_token_id, prompt_lengths=prompt_lengths)
    device = next(trainer.model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    for batch_size in (6, 4):  # 4: a chunk ends inside a prompt's rows
        want = logps_entropies_and_grads(trainer, ids, mask, batch_size)
        plain = trainer._get_per_token_logps_and_entropies
        assert shared_prompt_passes(trainer, multiple=64, attention=attention)
        got = logps_entropies_and_grads(trainer, ids, mask, batch_size)
        trainer._get_per_token_logps_and_entropies = plain
        for name, a, b in zip(("logps", "entropies", "grads", "reference"), got, want):
            if name == "grads":
                assert a.keys() == b.keys() and len(a) > 0 and all("lora_" in key for key in a)
                for key in a:
                    torch.testing.assert_close(a[key], b[key], atol=tol, rtol=10 * tol, msg=key)
            else:
                torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=name)
        assert not torch.equal(want[0], want[3])  # the adapters changed the log-probs: the reference is the base's


@pytest.mark.parametrize("attn_implementation, attention", [("sdpa", "masked"), ("eager", "masked"),
                                                             ("sdpa", "split"), ("eager", "split")])
def test_shared_prompt_passes_give_trls_logps_entropies_and_gradients(tiny_model_params, tmp_path,
                                                                       attn_implementation, attention):
    trainer, tok = lora_trainer(tiny_model_params, tmp_path, attn_implementation)
    check_shared_prompt_passes(trainer, tok, tol=1e-5, attention=attention)
    # split runs its own attention for its calls only: the model's own comes back
    assert trainer.model.get_base_model().config._attn_implementation == attn_implementation


def test_split_attention_through_compiled_layers_at_a_new_length(tiny_model_params, tmp_path):
    """Inductor on the CPU, as the layers compile on a GPU: the split masks' shapes carry the layout into the
    compiled layers, and a batch whose rows are longer than the first's runs the same dynamic graph (its backward
    once checked the prompt part's strides against the first batch's row length and failed)."""
    from mcgrpo.training import compile_decoder_layers

    trainer, tok = lora_trainer(tiny_model_params, tmp_path, "sdpa")
    compile_decoder_layers(trainer.model, backend="inductor")
    for lengths in TWO_ROW_LENGTHS:
        check_shared_prompt_passes(trainer, tok, tol=1e-4, attention="split", prompt_lengths=lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["masked", "split"])
def test_shared_prompt_passes_on_cuda_through_compiled_layers(tiny_model_params, tmp_path, attention):
    """As the pipeline trains on a GPU: SDPA's CUDA kernels with the packed masks, the layers compiled by inductor
    (split: without its coalescing analysis, as train_grpo compiles them), at two row lengths."""
    from mcgrpo.patches import split_attention_compiles
    from mcgrpo.training import compile_decoder_layers

    trainer, tok = lora_trainer(tiny_model_params, tmp_path, "sdpa")
    trainer.model.to("cuda")
    compile_decoder_layers(trainer.model)
    with split_attention_compiles(attention == "split"):
        for lengths in TWO_ROW_LENGTHS:
            check_shared_prompt_passes(trainer, tok, tol=1e-4, attention=attention, prompt_lengths=lengths)


def test_shared_prompts_stay_trls_where_masks_are_not_dense(tiny_model_params, tmp_path, capsys):
    from mcgrpo.training import shared_prompt_passes

    trainer, _ = lora_trainer(tiny_model_params, tmp_path, "sdpa")
    trainer.model.get_base_model().config._attn_implementation = "flash_attention_2"
    plain = trainer._get_per_token_logps_and_entropies
    assert not shared_prompt_passes(trainer) and trainer._get_per_token_logps_and_entropies == plain
    assert "flash_attention_2" in capsys.readouterr().out


@pytest.mark.parametrize("attention", ["masked", "split"])
def test_a_training_step_with_shared_prompts_is_trls_step(tiny_model_params, tmp_path, monkeypatch, attention):
    """Two optimizer steps of two micro-batches each, from the same seed: the same completions, losses, KL, gradient
    norms and adapter whether the log-prob passes run TRL's rows or one row per prompt (its group-keeping shuffle
    draws what TRL's draws, so the second step's rollouts are the same too)."""
    from safetensors.torch import load_file

    from mcgrpo import training
    from mcgrpo.data.synthetic import make_synthetic_mc

    def text_reward(completions, **kwargs):  # the untrained model earns no real reward: advantages would all be 0
        return [sum(map(ord, str(c))) % 7 / 7 for c in completions]

    monkeypatch.setattr(training, "reward_functions", lambda tp, reward_model_file=None: [text_reward])
    from mcgrpo.fileio import write_jsonl
    from mcgrpo.params import TrainParams
    from mcgrpo.training import run_fingerprint, train_grpo

    records = make_synthetic_mc(8, seed=2)
    write_jsonl(tmp_path / "train.jsonl", records)
    outcomes = {}
    for shared in (False, True):
        tp = TrainParams(max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=2,
                         max_completion_length=8, warmup_steps=0, gradient_checkpointing=True, beta=0.04,
                         optim="sgd", learning_rate=1.0,  # an update linear in the gradient (Adam's first is its sign)
                         lora={"r": 4, "alpha": 8}, rollout_engine="fast", shared_prompts=shared,
                         shared_prompt_attention=attention, reward_weights={"correct": 1.0})
        model, tok, peft_config = load_model(tiny_model_params, lora=tp.lora, seed=tp.seed)
        run = tmp_path / str(shared)
        summary = train_grpo(model, tok, peft_config, records, tp, checkpoints=run / "ckpt", adapter_out=run / "adapter",
                             live_dir=run / "live", bf16=False, engine="fast",
                             fingerprint=run_fingerprint(tp, tiny_model_params, tmp_path / "train.jsonl"))
        assert summary["shared_prompts"] is shared
        logs = json.loads((run / "ckpt" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"][:2]
        outcomes[shared] = logs, load_file(run / "adapter" / "adapter_model.safetensors")
    (plain_logs, plain_adapter), (logs, adapter) = outcomes[False], outcomes[True]
    for log, plain_log in zip(logs, plain_logs, strict=True):
        assert log["reward"] == plain_log["reward"] and log["num_tokens"] == plain_log["num_tokens"]
        for key in ("loss", "grad_norm", "entropy"):
            assert log[key] == pytest.approx(plain_log[key], rel=1e-4, abs=1e-7), key
        # the KL of a barely moved policy is (log-prob difference)^2 / 2: float32's ~1e-6 in the log-probs shows
        assert log["kl"] == pytest.approx(plain_log["kl"], rel=3e-2, abs=1e-9)
        assert log["reward_std"] > 0 and log["grad_norm"] > 1e-3  # the steps trained on something
    assert logs[1]["kl"] > 1e-6  # the second step's policy had moved from the reference
    assert adapter.keys() == plain_adapter.keys()
    for name in adapter:
        torch.testing.assert_close(adapter[name], plain_adapter[name], atol=1e-6, rtol=1e-4, msg=name)


def test_split_attention_is_refused_with_rollouts_that_call_the_model(tiny_model_params, tmp_path):
    """TRL's rollouts call the policy's generate inside the training step, where split attention is set."""
    from mcgrpo.errors import UserError
    from mcgrpo.training import shared_prompt_passes

    trainer, _ = lora_trainer(tiny_model_params, tmp_path, "sdpa")
    with pytest.raises(UserError, match="shared_prompt_attention=split needs the fast rollouts"):
        shared_prompt_passes(trainer, attention="split", engine="hf")
