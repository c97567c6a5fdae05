"""How the command-line entry points report a failure: one line naming the file, the field or the reason.

The library raises ordinary exceptions whose messages name what is wrong (`SettingsError` the config field,
`WorkdirError` the missing artefact, `CheckpointError` the damaged steps, ValueError/FileNotFoundError the file);
the CLIs wrap their work in `cli_errors` so the user sees `error: <message>` and exit status 1 instead of a
traceback. `--verbose` shows the traceback too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import traceback
from typing import Iterator

# What a user can cause and fix (bad input, bad values, missing or damaged files, divergence), as opposed to a bug.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError,
               RuntimeError, KeyError)


@dataclasses.dataclass
class Status:
    code: int = 0


def one_line(error: BaseException) -> str:
    """The message's first line (a KeyError's key is quoted by Python: say what it is)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    text = f"missing key {lines[0]}" if isinstance(error, KeyError) else lines[0]
    return text + (f" (+{len(lines) - 1} more lines with --verbose)" if len(lines) > 1 else "")


@contextlib.contextmanager
def cli_errors(verbose: bool = False) -> Iterator[Status]:
    """`with cli_errors(args.verbose) as status: work()`, then `return status.code`."""
    status = Status()
    try:
        yield status
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
        else:
            print(f"error: {one_line(e)}", file=sys.stderr)
        status.code = 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        status.code = 130
