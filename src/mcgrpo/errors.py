"""One error type for problems the user can fix, and the wrapper every stage runs under."""

import sys


class UserError(Exception):
    """Bad input or config: the message names the file/line or key and says what to do."""


def run_stage(main) -> None:
    """Run a stage's main(); a UserError becomes one clear line on stderr and exit code 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
