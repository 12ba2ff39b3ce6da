import random

import numpy as np
import pytest

from mcgrpo.data.synthetic import make_synthetic_mc
from mcgrpo.errors import UserError
from mcgrpo.params import RewardModelParams, TrainParams
from mcgrpo.reward_model import calibration, features, fit_reward_model, load_learned_reward, masked_reasoning, save
from mcgrpo.rewards import LETTERS


def test_the_answer_is_masked_out_of_the_reasoning():
    text = "<reasoning>Option B says she lives in Oslo, so B fits. A is wrong.</reasoning><answer>B</answer>"
    masked = masked_reasoning(text)
    assert "B" not in masked.split() and "<answer>" not in masked and "Oslo" in masked
    assert masked == "Option _ says she lives in Oslo, so _ fits. _ is wrong."


def test_features_measure_overlap_with_passage_and_options():
    row = features("<reasoning>The passage says Anna lives in Lima.</reasoning><answer>C</answer>",
                   context="Anna lives in Lima. Ben lives in Oslo.", question="Where does Anna live?",
                   options=["Oslo", "Rome", "Lima", "Cairo"])
    assert row["format_ok"] == 1.0
    assert row["option_overlap_max"] == 1.0 and row["option_overlap_margin"] == 1.0  # names Lima, and only Lima
    # question words {"does", "anna", "live"}: the reasoning has "anna" ("lives" is another word)
    assert row["question_overlap"] == pytest.approx(1 / 3)
    assert 0 < row["passage_overlap"] < 1  # "passage", "says" are not in the passage


def test_calibration_bins_and_error():
    bins, ece = calibration([0, 0, 1, 1], [0.05, 0.05, 0.95, 0.95], n_bins=10)
    assert [(b["bin"], b["observed"], b["count"]) for b in bins] == [(0, 0.0, 2), (9, 1.0, 2)]
    assert ece == pytest.approx(0.05)
    _, ece = calibration([0, 1, 0, 1], [0.9, 0.9, 0.9, 0.9])
    assert ece == pytest.approx(0.4)


def test_calibration_counts_match_sklearns_bins_even_on_edges():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(0)
    y_prob = np.concatenate([rng.random(300), [0.0, 0.1, 0.5, 0.7, 1.0]])  # exact bin edges included
    y_true = (rng.random(len(y_prob)) < y_prob).astype(int)
    bins, _ = calibration(y_true, y_prob, n_bins=10)
    observed, predicted = calibration_curve(y_true, y_prob, n_bins=10)
    assert [b["observed"] for b in bins] == [round(float(o), 4) for o in observed]
    assert [b["predicted"] for b in bins] == [round(float(p), 4) for p in predicted]
    assert sum(b["count"] for b in bins) == len(y_prob)
    for b in bins:  # each count's rows have the bin's mean prediction
        members = [p for p in y_prob if min(int(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p)), 9) == b["bin"]]
        assert len(members) == b["count"] and round(float(np.mean(members)), 4) == b["predicted"]


def labelled_rows(n_questions=40, seed=0, right_share=0.5):
    """Answers whose reasoning quotes the right option's fact when right and guesses when wrong: learnable."""
    rng = random.Random(seed)
    rows = []
    for item in make_synthetic_mc(n_questions, seed=seed):
        gold = item["options"][LETTERS.index(item["answer"])]
        for k in range(4):
            right = rng.random() < right_share
            wrong = item["options"][(LETTERS.index(item["answer"]) + 1) % 4]
            reasoning = (f"The passage states it: {gold}. So the answer follows from the text." if right
                         else f"Maybe {wrong}, I am not sure, I guess.")
            rows.append({"id": item["id"], "context": item["context"], "question": item["question"],
                         "options": item["options"], "correct": right,
                         "completion": f"<reasoning>{reasoning}</reasoning><answer>{'A' if right else 'B'}</answer>"})
    return rows


@pytest.mark.parametrize("classifier", ["logistic", "gbdt"])
def test_a_learnable_signal_is_learnt_and_scored_on_held_out_questions(classifier, tmp_path):
    rp = RewardModelParams(classifier=classifier)
    artifact, metrics, bins = fit_reward_model(labelled_rows(), rp)
    assert artifact["status"] == "ok" and metrics["skipped"] is False
    assert metrics["roc_auc"] > 0.95 and metrics["brier"] < metrics["brier_baseline"]
    assert metrics["n_train"] + metrics["n_test"] == metrics["n_examples"] == 160
    assert sum(b["count"] for b in bins) == metrics["n_test"]
    # The saved model is a TRL reward function: P(correct) per completion, from the dataset columns.
    save(tmp_path / "rm.joblib", artifact)
    learned = load_learned_reward(tmp_path / "rm.joblib")
    rows = labelled_rows(4, seed=9)
    scores = learned([r["completion"] for r in rows], context=[r["context"] for r in rows],
                     question=[r["question"] for r in rows], options=[r["options"] for r in rows],
                     answer=["A"] * len(rows), trainer_state=None)
    assert len(scores) == len(rows) and all(0 <= s <= 1 for s in scores)
    right = [s for s, r in zip(scores, rows) if r["correct"]]
    wrong = [s for s, r in zip(scores, rows) if not r["correct"]]
    assert min(right) > max(wrong)


def test_labels_without_signal_score_near_chance():
    rows = labelled_rows(60, seed=3)
    rng = random.Random(1)
    for r in rows:
        r["correct"] = rng.random() < 0.5  # labels unrelated to the text
    _, metrics, _ = fit_reward_model(rows, RewardModelParams())
    assert metrics["roc_auc"] < 0.7


@pytest.mark.parametrize("share,reason", [(1.0, "all 160 labelled completions are right"),
                                          (0.0, "all 160 labelled completions are wrong"),
                                          (0.01, "of the rarer class")])
def test_degenerate_labels_skip_with_a_reason(share, reason, tmp_path):
    artifact, metrics, bins = fit_reward_model(labelled_rows(right_share=share), RewardModelParams())
    assert metrics["skipped"] is True and reason in metrics["reason"] and bins == []
    save(tmp_path / "rm.joblib", artifact)
    with pytest.raises(UserError, match="reward model was skipped.*train.reward_weights.learned"):
        load_learned_reward(tmp_path / "rm.joblib")


def test_a_missing_reward_model_names_the_stage(tmp_path):
    with pytest.raises(UserError, match="dvc repro reward_model"):
        load_learned_reward(tmp_path / "missing.joblib")


def test_learned_is_a_reward_weight():
    assert TrainParams(reward_weights={"correct": 1.0, "learned": 0.3}).reward_weights["learned"] == 0.3
    with pytest.raises(ValueError, match="learned"):
        TrainParams(reward_weights={"correct": 1.0, "learnt": 0.3})
