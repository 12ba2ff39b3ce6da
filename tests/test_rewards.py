import json
import subprocess
import sys

import pytest
import yaml

from mcgrpo.params import TrainParams
from mcgrpo.rewards import (
    base_choice_reward,
    REWARDS,
    correctness_reward,
    extract_answer,
    follows_format,
    format_reward,
    judge,
    mc_reward,
    reasoning_text,
    score_completion,
    tag_count_reward,
)


@pytest.mark.parametrize("text, expected", [
    ("Answer: C", "C"),
    ("the answer is (c)", "C"),
    ("**Answer:** C", "C"),
    ("**Answer**: D", "D"),
    ("<answer>C</answer>", "C"),
    ("<answer> (B) </answer>", "B"),
    (r"so \boxed{C}", "C"),
    (r"$\boxed{\text{B}}$", "B"),
    ("Answer: C) The boy went home", "C"),
    ("Final answer: B.", "B"),
    ("The correct option is D.", "D"),
    ("The answer would be B", "B"),
    ("answer: c", "C"),
    ("C", "C"),
    ("(B)", "B"),
    ("B. Because the passage says so", "B"),
    ("C) The boy", "C"),
    ("<reasoning>Option A is wrong, so is B.</reasoning><answer>D</answer>", "D"),
    ("<answer>Answer: C</answer>", "C"),
    # the last declaration wins
    ("Answer: B\nWait, let me check again.\nFinal answer: D", "D"),
    ("<answer>A</answer> ... on reflection <answer>C</answer>", "C"),
    ("Answer: A l Answer: B", "B"),  # found by fuzzing: two declarations on one line
    # an unreadable later mention does not erase a clear declaration
    ("Answer: C. The answer is in paragraph 2.", "C"),
])
def test_extracts_declared_letter(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", [
    "Answer: A boy went home",          # the article, not option A
    "A boy went home.",                 # stray capital at the start
    "I think the passage is about B",   # no declaration
    "Option A says x. Option B says y.",
    "answer is a good one",             # lowercase word, not a letter
    "Answer: A or B",                   # two letters in the final declaration
    "<answer>A, C</answer>",
    "Answer: B\nFinal answer: A or C",  # final declaration is ambiguous: no fallback to B
    "Answer: E",                        # outside 4 options
    "",
])
def test_no_answer(text):
    assert extract_answer(text, n_options=4) is None


def test_letter_range_follows_n_options():
    assert extract_answer("Answer: E", n_options=5) == "E"
    assert extract_answer("Answer: E", n_options=4) is None
    assert extract_answer("Answer: J", n_options=10) == "J"
    assert extract_answer("Answer: C", n_options=2) is None


def test_conversational_completions():
    convo = [{"role": "assistant", "content": "<reasoning>x</reasoning><answer>B</answer>"}]
    assert extract_answer(convo) == "B"
    assert correctness_reward([convo, [{"role": "assistant", "content": "Answer: A"}]], answer=["B", "B"],
                              n_options=[4, 4]) == [1.0, 0.0]


def test_format_reward_strict():
    good = "<reasoning>The passage says C.</reasoning>\n<answer>C</answer>"
    assert format_reward([good, "Answer: C", "<reasoning></reasoning><answer>C</answer> extra"]) == [1.0, 0.0, 0.0]
    assert follows_format("C", "direct") and not follows_format("C because the passage says it", "direct")


def test_tag_count_reward_partial_credit():
    assert tag_count_reward(["<reasoning>x</reasoning>", "<reasoning>x</reasoning><answer>A</answer>", "none"]) == \
        [0.5, 1.0, 0.0]


def test_mc_reward_weights_and_trl_signature():
    completions = ["<reasoning>r</reasoning><answer>B</answer>", "Answer: B", "Answer: A"]
    # TRL passes prompts, completion_ids and dataset columns as keywords: all must be accepted
    rewards = mc_reward(completions, answer=["B"] * 3, n_options=[4] * 3, prompts=["p"] * 3, completion_ids=None,
                        trainer_state=None, weights=TrainParams().rule_reward_weights)
    assert rewards == [pytest.approx(1.2), 1.0, 0.0]
    assert mc_reward(completions, ["B"] * 3, weights={"correct": 0.0, "format": 1.0}) == [1.0, 0.0, 0.0]
    with pytest.raises(TypeError):  # no hidden default weights: every caller says which
        mc_reward(completions, ["B"] * 3)
    assert set(REWARDS) >= {"correct", "format"}


def test_score_completion_and_reasoning():
    s = score_completion("<reasoning>because x</reasoning><answer>A</answer>", "A", 4, "cot", {"correct": 1, "format": 0.5})
    assert s == {"pred": "A", "correct": True, "format_ok": True, "reward": pytest.approx(1.5)}
    assert judge("Answer: B", "A", 4, "cot") == {"pred": "B", "correct": False, "format_ok": False}


def test_rule_reward_weights_come_from_params_without_the_learned_one():
    tp = TrainParams(reward_weights={"correct": 1.0, "format": 0.3, "learned": 0.5})
    assert tp.rule_reward_weights == {"correct": 1.0, "format": 0.3}
    assert reasoning_text("<reasoning>because x</reasoning><answer>A</answer>") == "because x"


def test_score_cli_reads_stdin_and_keeps_order(tmp_path):
    lines = [{"completion": "<reasoning>r</reasoning><answer>B</answer>", "answer": "B"},
             {"completion": "Answer: E", "answer": "E", "n_options": 5},
             {"completion": "Answer: A boy", "answer": "A"}]
    src = "\n".join(json.dumps(x) for x in lines) + "\n"
    out = subprocess.run([sys.executable, "-m", "mcgrpo.cli", "score"], input=src, text=True, capture_output=True,
                         check=True).stdout.splitlines()
    got = [json.loads(x) for x in out]
    assert [g["pred"] for g in got] == ["B", "E", None]
    assert [g["correct"] for g in got] == [True, True, False]
    assert got[0]["format_ok"] is True and got[0]["reward"] == pytest.approx(1.2)
    f = tmp_path / "in.jsonl"
    f.write_text(src)
    assert subprocess.run([sys.executable, "-m", "mcgrpo.cli", "score", str(f)], text=True, capture_output=True,
                          check=True).stdout.splitlines() == out


def test_score_cli_weighs_with_the_projects_reward_weights(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    params["train"]["reward_weights"] = {"correct": 2.0, "format": 0.5, "learned": 0.3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    line = json.dumps({"completion": "<reasoning>r</reasoning><answer>B</answer>", "answer": "B"}) + "\n"
    out = subprocess.run([sys.executable, "-m", "mcgrpo.cli", "score", "--params", str(tmp_path / "params.yaml")],
                         input=line, text=True, capture_output=True, check=True).stdout
    assert json.loads(out)["reward"] == pytest.approx(2.5)  # the learned weight is not a rule: left out


def test_score_cli_bad_line_names_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"completion": "A", "answer": "A"}\n{"completion": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "mcgrpo.cli", "score", str(f)], text=True, capture_output=True)
    assert proc.returncode == 2
    assert f"{f}:2" in proc.stderr and "answer" in proc.stderr


OPTIONS = ["the boy went home", "the girl went to school", "they stayed at the park", "nobody knows"]


@pytest.mark.parametrize("text,expected,in_format", [
    (" the girl went to school\n- they stayed", "B", True),      # the first line only
    ("The Girl went  to school.", "B", False),                    # lenient match, not the strict form
    (" they stayed at the", "C", False),                          # a truncated copy still names C
    (" a dragon ate the moon", None, False),                      # a new sentence
    ("", None, False),
    (" D", None, False),                                          # letters are not this variant's answers
])
def test_completion_option_reads_the_restated_option(text, expected, in_format):
    from mcgrpo.rewards import judge

    assert judge(text, "B", 4, "completion_option", OPTIONS) == {
        "pred": expected, "correct": expected == "B", "format_ok": in_format}


def test_completion_option_refuses_a_tie():
    from mcgrpo.rewards import match_option

    assert match_option("car", ["red car", "blue car"]) is None and match_option("red car", ["red car", "car"]) == "A"


def test_completion_option_rewards_take_the_options_column():
    # TRL passes dataset columns as lists, one per completion; without options the variant cannot be judged
    completions = [" the girl went to school", " nobody knows", " the boy"]
    kwargs = dict(answer=["B", "B", "C"], n_options=[4] * 3, variant=["completion_option"] * 3, options=[OPTIONS] * 3)
    assert correctness_reward(completions, **kwargs) == [1.0, 0.0, 0.0]
    assert format_reward(completions, **kwargs) == [1.0, 1.0, 0.0]
    assert mc_reward(completions, **kwargs, weights={"correct": 1.0, "format": 0.5}) == [1.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="pass options"):
        correctness_reward(completions, answer=["B"] * 3, variant="completion_option")


@pytest.mark.parametrize("text,expected", [
    (" the girl went to school with her friends\nArticle: the boy", "B"),  # the first line: "girl", "school" are B's
    (" At the park.", "C"),                                       # one word only C has is enough
    (" a dragon ate the moon", None),                             # no option's word
    (" went", None),                                              # a word A and B share names neither
    (" the boy went home. The girl went to school.", None),       # names A and B: a spray of candidates
    ("", None),
])
def test_completion_open_reads_the_one_option_named(text, expected):
    from mcgrpo.rewards import judge

    assert judge(text, "B", 4, "completion_open", OPTIONS) == {
        "pred": expected, "correct": expected == "B", "format_ok": expected is not None}
    with pytest.raises(ValueError, match="'completion_open' is judged against the option texts"):
        judge(text, "B", 4, "completion_open")


def test_completion_open_is_not_read_from_a_line_naming_every_option():
    # the line GRPO learnt under a looser reading (word-overlap F1, unique best): it names all the candidates
    from mcgrpo.rewards import named_option

    options = ["Kim's.", "Kate's.", "Lily's.", "Lucy's."]
    assert named_option("It's Kim's. It's Kate's. It's Lily's. It's Kim's.", options) is None
    assert named_option("It's Kim's.", options) == "A"
    assert named_option("sing and dance very well", ["play the guitar", "sing and dance", "sing well"]) is None
    assert named_option("she can sing and dance", ["play the guitar", "sing and dance", "sing well"]) == "B"


def test_base_choice_rewards_the_base_models_own_choice_by_its_text():
    # The column is an option's text, so it is right whatever order a completion saw its options in.
    shuffled = [OPTIONS[1], OPTIONS[0], OPTIONS[3], OPTIONS[2]]
    completions = [" the girl went to school", " nobody knows", "B", " something else entirely"]
    kwargs = dict(answer=["C", "C", "C", "C"], n_options=[4] * 4,
                  variant=["completion_option"] * 2 + ["completion_direct", "completion_option"],
                  options=[OPTIONS, OPTIONS, shuffled, OPTIONS],
                  base_choice=[OPTIONS[1], OPTIONS[1], OPTIONS[0], OPTIONS[3]])
    assert base_choice_reward(completions, **kwargs) == [1.0, 0.0, 1.0, 0.0]  # "B" of `shuffled` is OPTIONS[0]
    assert mc_reward(completions, **kwargs, weights={"correct": 1.0, "base_choice": 0.5}) == [0.5, 0.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="training column 'base_choice'"):
        base_choice_reward(completions, options=[OPTIONS] * 4, variant="completion_option")
    with pytest.raises(ValueError, match="pass options"):  # a letter alone cannot name the chosen option's text
        base_choice_reward(["B"], variant="completion_direct", base_choice=[OPTIONS[1]])
    # It needs a column only training has, so a completion scored alone (plots, `mcgrpo score`, chat) leaves it out.
    assert TrainParams(reward_weights={"correct": 1.0, "base_choice": 1.0}).rule_reward_weights == {"correct": 1.0}
    with pytest.raises(ValueError, match="unknown reward"):
        TrainParams(reward_weights={"correct": 1.0, "base_choise": 1.0})


def test_score_cli_needs_options_for_completion_option(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"completion": " nobody knows", "answer": "D", "variant": "completion_option",
                                "options": OPTIONS}) + "\n"
                    + json.dumps({"completion": " nobody knows", "answer": "D", "variant": "completion_option"}) + "\n")
    out = subprocess.run([sys.executable, "-m", "mcgrpo.cli", "score", str(rows)], capture_output=True, text=True)
    assert out.returncode != 0 and json.loads(out.stdout.splitlines()[0])["correct"] is True
    assert f"{rows}:2" in out.stderr and "add the options" in out.stderr
