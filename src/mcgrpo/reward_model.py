"""A learned reward: a scikit-learn classifier that predicts, from the reasoning alone, whether a
completion's answer is right.

The final answer is masked before any feature is computed: the answer tag is dropped and every
standalone option letter in the reasoning becomes "_", so the model judges the reasoning, not the
letter. Features: TF-IDF of the masked reasoning, plus how much of the reasoning comes from the
passage, how strongly it points at one option, its length and whether it kept the format.

Labelled pairs are the base model's sampled answers to training questions (the `reward_model`
stage), never eval questions: a reward fitted on eval answers would leak the eval labels into
training.
"""

import math
import re

import numpy as np

from mcgrpo.rewards import completion_text, follows_format, reasoning_text

NUMERIC_FEATURES = ["log_words", "format_ok", "passage_overlap", "question_overlap", "option_overlap_max",
                    "option_overlap_margin"]
_WORD = re.compile(r"[a-z0-9']+")
_LETTER = re.compile(r"\b[A-J]\b")


def masked_reasoning(completion) -> str:
    """The reasoning with its answer hidden: no answer tag, option letters replaced by '_'."""
    return _LETTER.sub("_", reasoning_text(completion_text(completion)))


def _content_words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in ENGLISH_STOP_WORDS}


def _coverage(part: set, whole: set) -> float:
    return len(part & whole) / len(part) if part else 0.0


def features(completion, context: str, question: str, options: list[str]) -> dict:
    """One row of model input: the masked reasoning and the numeric features."""
    reasoning = masked_reasoning(completion)
    words = _content_words(reasoning)
    option_overlaps = sorted((_coverage(_content_words(o), words) for o in options), reverse=True) or [0.0]
    return {
        "reasoning": reasoning,
        "log_words": math.log1p(len(reasoning.split())),
        "format_ok": float(follows_format(completion, "cot")),
        "passage_overlap": _coverage(words, _content_words(context)),  # share of reasoning words found in the passage
        "question_overlap": _coverage(_content_words(question), words),
        "option_overlap_max": option_overlaps[0],  # how much of the best-matching option the reasoning repeats
        "option_overlap_margin": option_overlaps[0] - (option_overlaps[1] if len(option_overlaps) > 1 else 0.0),
    }


def feature_table(rows: list[dict]):
    """A DataFrame of features for rows with completion, context, question, options."""
    import pandas as pd

    return pd.DataFrame([features(r["completion"], r["context"], r["question"], r["options"]) for r in rows])


def build_classifier(rp):
    """TF-IDF + numeric features into logistic regression or gradient boosting."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = ColumnTransformer(
        [("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=rp.max_features, sublinear_tf=True),
          "reasoning"),
         ("numeric", StandardScaler(), NUMERIC_FEATURES)],
        sparse_threshold=0.0 if rp.classifier == "gbdt" else 0.3)  # gradient boosting needs dense input
    if rp.classifier == "gbdt":
        head = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=rp.seed)
    else:
        # No class re-weighting: the reward is used as P(correct), so the probabilities must stay calibrated.
        head = LogisticRegression(C=rp.C, max_iter=2000)
    return make_pipeline(columns, head)


def calibration(y_true, y_prob, n_bins: int = 10) -> tuple[list[dict], float]:
    """Reliability bins (mean predicted, observed rate, count) and the expected calibration error.

    The bins are scikit-learn's `calibration_curve` (uniform); the counts, which it does not return, come from
    the same rule it bins with (searchsorted over the inner edges), so each count belongs to its bin.
    """
    from sklearn.calibration import calibration_curve

    y_true, y_prob = np.asarray(y_true, float), np.asarray(y_prob, float)
    observed, predicted = calibration_curve(y_true, y_prob, n_bins=n_bins, strategy="uniform")
    bin_ids = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], y_prob)
    counts = np.bincount(bin_ids, minlength=n_bins)
    filled = np.flatnonzero(counts)
    table = [{"bin": int(b), "predicted": round(float(p), 4), "observed": round(float(o), 4), "count": int(counts[b])}
             for b, p, o in zip(filled, predicted, observed)]
    ece = float(sum(counts[b] / len(y_prob) * abs(p - o) for b, p, o in zip(filled, predicted, observed)))
    return table, ece


def degenerate_reason(labels, groups, rp) -> str | None:
    """Why no classifier can be fitted on these labels (None if one can)."""
    positives, n = int(sum(labels)), len(labels)
    if n == 0:
        return "no labelled completions"
    if positives in (0, n):
        kind = "right" if positives else "wrong"
        return (f"all {n} labelled completions are {kind}: nothing to tell apart (common with a tiny or very "
                "strong model); raise reward_model.n_questions or samples_per_question, or use a stronger model")
    if min(positives, n - positives) < rp.min_per_class:
        return (f"only {min(positives, n - positives)} completions of the rarer class (need "
                f"reward_model.min_per_class={rp.min_per_class}); raise reward_model.n_questions")
    if len(set(groups)) < 4:
        return f"only {len(set(groups))} distinct questions; a held-out split needs at least 4"
    return None


def fit_reward_model(rows: list[dict], rp) -> tuple[dict, dict, list[dict]]:
    """Fit on a question-grouped split and score the held-out part.

    rows: completion, context, question, options, correct, id. Returns (artifact to save, metrics,
    calibration table). Degenerate labels give a skipped artifact and metrics saying why.
    """
    labels = [int(r["correct"]) for r in rows]
    groups = [r["id"] for r in rows]
    counts = {"n_examples": len(rows), "n_questions": len(set(groups)),
              "positive_rate": round(sum(labels) / len(labels), 4) if labels else None}
    reason = degenerate_reason(labels, groups, rp)
    if reason is None:
        from sklearn.model_selection import GroupShuffleSplit

        # Split by question: completions of one question share passage words, so a row-level split
        # would score the classifier on questions it has already seen.
        train_idx, test_idx = next(GroupShuffleSplit(n_splits=1, test_size=rp.test_size, random_state=rp.seed)
                                   .split(rows, labels, groups))
        y_train, y_test = [labels[i] for i in train_idx], [labels[i] for i in test_idx]
        if len(set(y_train)) < 2 or len(set(y_test)) < 2:
            reason = ("the question-grouped split left one class out of the train or test part; raise "
                      "reward_model.n_questions or change reward_model.seed")
    if reason is not None:
        return {"status": "skipped", "reason": reason}, {"skipped": True, "reason": reason, **counts}, []

    from sklearn.metrics import brier_score_loss, roc_auc_score

    table = feature_table(rows)
    classifier = build_classifier(rp).fit(table.iloc[train_idx], y_train)
    y_prob = classifier.predict_proba(table.iloc[test_idx])[:, 1]
    bins, ece = calibration(y_test, y_prob)
    metrics = {"skipped": False, **counts, "n_train": len(train_idx), "n_test": len(test_idx),
               "roc_auc": round(float(roc_auc_score(y_test, y_prob)), 4),
               "brier": round(float(brier_score_loss(y_test, y_prob)), 4),
               # the score of always predicting the train positive rate: the Brier score to beat
               "brier_baseline": round(float(np.mean((np.array(y_test) - np.mean(y_train)) ** 2)), 4),
               "ece": round(ece, 4), "classifier": rp.classifier}
    # Refit on everything for the reward itself; the metrics above come from the held-out split.
    artifact = {"status": "ok", "classifier": build_classifier(rp).fit(table, labels), "metrics": metrics}
    return artifact, metrics, bins


def save(path, artifact: dict) -> None:
    import joblib

    from mcgrpo.fileio import atomic_path

    with atomic_path(path) as tmp:
        joblib.dump(artifact, tmp)


def load_learned_reward(path):
    """The TRL reward function `learned(completions, context, question, options)`: P(correct) per completion.

    joblib files are pickles: load only ones this pipeline wrote.
    """
    import joblib

    from mcgrpo.errors import UserError

    try:
        artifact = joblib.load(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro reward_model` first") from None
    if artifact.get("status") != "ok":
        raise UserError(f"{path}: the reward model was skipped ({artifact.get('reason')}); set "
                        "train.reward_weights.learned to 0, or fix the reward_model stage's data")
    classifier = artifact["classifier"]

    def learned(completions, context, question, options, **kwargs) -> list[float]:
        table = feature_table([{"completion": c, "context": ctx, "question": q, "options": o}
                               for c, ctx, q, o in zip(completions, context, question, options)])
        return classifier.predict_proba(table)[:, 1].tolist()

    return learned
