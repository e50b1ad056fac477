"""Errors the user can fix, and the one way every entry point reports them: one line, non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input (config, path, data, service): the message says what is wrong and what to do."""


def run_cli(main: Callable[[], object]) -> None:
    """Run an entry point; a UserError becomes one line on stderr and exit status 2, not a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
