"""One error type for problems the user can fix, and the wrapper every stage runs under."""

import sys


class UserError(Exception):
    """Bad input or config: the message names the file/line or key and says what to do."""


EVAL_OOM = ("Lower eval.batch_size (then eval.max_new_tokens, or prepare.max_prompt_tokens), e.g. "
            "dvc exp run -S eval.batch_size=8")
REWARD_MODEL_OOM = ("Lower reward_model.batch_size (then reward_model.max_new_tokens), e.g. "
                    "dvc exp run -S reward_model.batch_size=8")
TRAIN_OOM = ("Lower train.per_device_train_batch_size (raising train.gradient_accumulation_steps keeps the batch), "
             "train.num_generations or train.max_completion_length, or set train.gradient_checkpointing: true, "
             "e.g. dvc exp run -S train.per_device_train_batch_size=4 -S train.gradient_accumulation_steps=4")


def run_stage(main, oom_hint: str = "") -> None:
    """Run a stage's main(); a UserError becomes one clear message on stderr and exit code 2, and a GPU
    out-of-memory error a message naming the params to lower (exit code 3)."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError); matched by name to keep torch out of this module
        if type(err).__name__ != "OutOfMemoryError":
            raise
        print(f"error: the GPU ran out of memory ({str(err).splitlines()[0]}).\n{oom_hint}", file=sys.stderr)
        sys.exit(3)
