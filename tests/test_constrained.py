"""completion_pick: answers decoded under a constraint that lets them be one option, whole (mcgrpo.constrained)."""

import pytest
import torch

from mcgrpo.constrained import NO_TOKEN, AllowedAnswers, answer_choices, answer_tensor, constrained_pick
from mcgrpo.modeling import load_model
from mcgrpo.rewards import PICK_VARIANT, judge, picked_option

# three rows: options that share first tokens (7 then 8 or 9), one that is a prefix of another (5 | 5 6), none
OPTIONS = [[[7, 8, 1], [7, 9, 1], [3, 1]], [[5, 1], [5, 6, 1]], []]


def allowed_reference(rows, written, step):
    """The tokens each row may write at `step`, spelled out: the next token of every option the written tokens match."""
    return [{ids[step] for ids in options if len(ids) > step and ids[:step] == w[:step]} for options, w in
            zip(rows, written)]


@pytest.mark.parametrize("sampling", [False, True])
def test_constrained_pick_is_the_full_vocabulary_pick_with_every_other_token_masked(sampling):
    """Step by step, the pick equals argmax over the whole vocabulary (plus the same Gumbel noise when sampling)
    with every token outside the allowed set at -inf: the model's own distribution renormalised over the options'
    continuations, each shared token counted once. A row without options picks freely; NaN logits are never
    picked."""
    vocab, steps = 12, 4
    answers = answer_tensor(OPTIONS, steps)
    assert answers.shape == (3, 3, steps) and int(answers[2].max()) == NO_TOKEN
    alive, step = torch.ones(3, 3, dtype=torch.bool), torch.zeros((), dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    written = [[], [], []]
    for t in range(3):
        logits = torch.randn(3, vocab, generator=gen)
        logits[0, 8] = float("nan")  # row 0 may write 8 at step 1: a NaN logit must lose to any allowed token
        uniform = torch.rand(3, vocab, generator=gen) if sampling else None
        scores = logits.nan_to_num(nan=float("-inf"))
        if sampling:
            scores = scores / 0.7 - torch.log(-torch.log(uniform))
        free = scores.argmax(-1)
        temperature = torch.tensor(0.7) if sampling else None
        picked = constrained_pick(logits, free, answers, alive, step, temperature=temperature, uniform=uniform)
        for b, allowed in enumerate(allowed_reference(OPTIONS, written, t)):
            if allowed:
                masked = torch.full((vocab,), float("-inf"))
                masked[sorted(allowed)] = scores[b, sorted(allowed)].nan_to_num(neginf=-1e30)
                assert int(picked[b]) == int(masked.argmax()), (t, b, allowed)
            else:
                assert int(picked[b]) == int(free[b])
            written[b].append(int(picked[b]))
        assert int(step) == t + 1
    for b in (0, 1):  # the rows wrote one option each, whole, its line end (1) included
        assert any(written[b][:len(ids)] == ids for ids in OPTIONS[b]), written[b]


def test_nothing_is_allowed_past_the_last_step():
    from mcgrpo.constrained import next_tokens

    answers = answer_tensor(OPTIONS, 2)
    alive = torch.ones(3, 3, dtype=torch.bool)
    assert next_tokens(answers, alive, torch.tensor(1))[1].any()
    for step in (2, 5):  # an index past the budget is not read (a CUDA gather there would be a device-side assert)
        assert not next_tokens(answers, alive, torch.tensor(step))[1].any()


def test_the_hf_processor_allows_what_constrained_pick_allows():
    answers = answer_tensor(OPTIONS, 4)
    processor = AllowedAnswers(answers, prompt_length=2)
    prompt = torch.tensor([[4, 4], [4, 4], [4, 4]])
    for written in ([], [7, 5, 0], [7, 5, 0, 9, 6, 0]):
        ids = torch.cat([prompt, torch.tensor(written).view(3, -1)], 1) if written else prompt
        step = len(written) // 3
        out = processor(ids, torch.zeros(3, 12))
        rows = [list(map(int, ids[b, 2:])) for b in range(3)]
        for b, allowed in enumerate(allowed_reference(OPTIONS, rows, step)):
            finite = set(torch.isfinite(out[b]).nonzero().flatten().tolist())
            assert finite == (allowed or set(range(12))), (step, b)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_params):
    model, tok, _ = load_model(tiny_model_params)
    return model, tok


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_both_engines_write_one_option_whole_and_agree(model_and_tokenizer, records, device):
    """Greedy: the fast engine (on CUDA compiled, its step a CUDA graph) and model.generate with the processor give
    the same answers, each exactly one of its question's options, read as that option. Sampled: every answer is
    still one option. Cut at a short budget, an answer is the start of one."""
    from mcgrpo.evaluation import answer_eval_set
    from mcgrpo.generation import generate
    from mcgrpo.params import EvalParams
    from mcgrpo.prompts import render_prompt, stop_token_ids

    model, tok = model_and_tokenizer
    model = model.to(device)
    prompts = [render_prompt(tok, r, PICK_VARIANT) for r in records]
    assert prompts == [render_prompt(tok, r, "completion_open") for r in records]  # no options shown
    answers = [answer_choices(tok, r) for r in records]
    kw = dict(batch_size=4, max_new_tokens=40, stop_ids=stop_token_ids(tok, PICK_VARIANT), answers=answers)
    hf = generate(model, tok, prompts, engine="hf", **kw)
    fast = generate(model, tok, prompts, engine="fast", **kw)
    assert hf == fast
    free = generate(model, tok, prompts, engine="fast", **{**kw, "answers": None})
    assert free != fast  # the untrained model writes no option by itself: the constraint did the work
    sampled = generate(model, tok, prompts, engine="fast", temperature=1.0, seed=3, **kw)
    for outputs in (fast, sampled):
        for r, out in zip(records, outputs):
            assert out["text"] in r["options"] and out["finished"]
            assert judge(out["text"], r["answer"], 4, PICK_VARIANT, r["options"])["format_ok"]
            assert picked_option(out["text"], r["options"]) == "ABCD"[r["options"].index(out["text"])]
    cut = generate(model, tok, prompts, engine="fast", **{**kw, "max_new_tokens": 1})
    for r, out in zip(records, cut):
        assert any(o.startswith(out["text"]) for o in r["options"]) and not out["finished"]
    # the eval routine passes the constraint for this variant
    ep = EvalParams(variants=[PICK_VARIANT], mode="generate", batch_size=4, max_new_tokens=40, engine="fast")
    rows = answer_eval_set(model, tok, records, ep, "base")
    assert [row["completion"] for row in rows] == [o["text"] for o in fast]
    assert all(row["format_ok"] for row in rows)
    model.to("cpu")


def test_picked_option_reads_the_option_a_line_is():
    options = ["She was tired", "He left early", "She was tired", "a new job"]
    assert picked_option("he  LEFT early", options) == "B"  # case and spacing aside
    assert picked_option("She was tired", options) is None  # two options with that text: no answer
    assert picked_option("a new job in town", options) == "D"  # not an option whole: read as completion_open reads
    assert not judge("a new job in town", "D", 4, PICK_VARIANT, options)["format_ok"]
    assert judge("a new job", "D", 4, PICK_VARIANT, options) == {"pred": "D", "correct": True, "format_ok": True}


def test_completion_pick_needs_the_projects_rollouts():
    from mcgrpo.params import TrainParams

    with pytest.raises(ValueError, match="train.rollout_engine to auto or fast"):
        TrainParams(variant=PICK_VARIANT, rollout_engine="hf")
    assert TrainParams(variant=PICK_VARIANT).rollout_engine == "auto"


def test_only_completion_pick_generates_under_the_constraint(model_and_tokenizer, records):
    from mcgrpo.constrained import answers_for, line_end_id

    _, tok = model_and_tokenizer
    assert answers_for(tok, records, "completion_open") is None and answers_for(tok, records, "cot") is None
    choices = answers_for(tok, records, PICK_VARIANT)
    assert choices == [answer_choices(tok, r) for r in records] and len(choices[0]) == len(records[0]["options"])
    end = line_end_id(tok)
    assert all(ids[-1] == end and tok.decode(ids[:-1]) == " " + o for ids, o in zip(choices[0], records[0]["options"]))
