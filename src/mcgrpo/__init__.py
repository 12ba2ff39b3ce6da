"""mcgrpo: teach a small chat model to reason on multiple-choice reading comprehension with GRPO."""

__version__ = "0.1.0"
