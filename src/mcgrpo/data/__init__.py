"""Datasets in, one normalised record out: {id, context, question, options, answer, source}."""

from mcgrpo.data.loaders import load_splits
from mcgrpo.data.records import make_record
from mcgrpo.data.stats import dataset_stats, question_kind

__all__ = ["dataset_stats", "load_splits", "make_record", "question_kind"]
