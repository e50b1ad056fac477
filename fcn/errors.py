"""Errors the user can fix, and the one way every entry point reports them: one line, non-zero exit.

Anything else that escapes an entry point (a bug, a full disk, a library's own exception) is also one line: what
failed, and the file its full traceback was written to. FCN_TRACEBACK=1 prints the traceback instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

TRACEBACK_ENV = "FCN_TRACEBACK"


class UserError(Exception):
    """Bad input (config, path, data, service): the message says what is wrong and what to do."""


def _traceback_file(prog: str, text: str) -> Path | None:
    """Write `text` to a fresh file in the temp dir (never the out dir: a read-only command writes nothing there)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".traceback.txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return Path(name)
    except OSError:
        return None


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300]}" if msg else type(e).__name__


def run_cli(main: Callable[[], object], prog: str | None = None) -> None:
    """Run an entry point; exit with its return value (an int) or 0.

    UserError → one line on stderr, exit 2. Any other exception → one line naming it and the traceback file, exit 1
    (or the full traceback with FCN_TRACEBACK=1). Ctrl-C → one line, exit 130.
    """
    if prog is None:  # `python -m fcn.train`: the module's name; else the script's
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        prog = spec.name.replace(".__main__", "") if spec is not None else (Path(sys.argv[0]).stem or "fcn")
    try:
        rc = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place an unexpected failure becomes one line
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        where = _traceback_file(prog, traceback.format_exc())
        tail = f"traceback in {where}" if where else "no traceback file could be written"
        print(
            f"error: {prog} failed unexpectedly ({_one_line(e)}); {tail}; rerun with {TRACEBACK_ENV}=1 to print it",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
