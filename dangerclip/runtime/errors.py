"""The one error contract of every ``dangerclip`` command.

A **user mistake** (a missing or wrong-kind file, an unknown name, a bad setting, an unreachable service) is a
:class:`UserError` (or one of :data:`USER_ERRORS`): the command prints one or two plain lines that say what is
wrong and what to do, and exits 2; the traceback shows only with ``-v``. Anything else is an **internal error**:
the command says so, prints the traceback, and exits 1.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any


class UserError(ValueError):
    """A mistake the user can fix. The message says what is wrong and, where it can, what to do.

    A ``ValueError``, so code that handles bad values (``exits_2_on_bad_input``, callers of the loaders) handles
    it too.
    """


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,  # bad values in options, configs and files (pydantic's ValidationError is one)
)
"""What a command reports as the user's mistake (exit 2, no traceback)."""

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def describe_error(e: BaseException) -> str:
    """``Type: message``, without the type twice (kafka-python's messages often start with it)."""
    name, text = type(e).__name__, str(e)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def _pydantic_lines(e: Any, env_prefix: str) -> list[str] | None:
    errors = getattr(e, "errors", None)
    if not callable(errors) or not type(e).__module__.startswith("pydantic"):
        return None
    lines = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        name = f"{env_prefix}{loc.upper()}" if env_prefix and loc else loc
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {str(got)[:80]!r})"
        lines.append(f"{name}: {err.get('msg', 'invalid')}{shown}")
    return lines


def user_message(e: BaseException, *, env_prefix: str = "", max_chars: int = 400) -> str:
    """``e`` as at most two short lines for a person: no traceback, no library's multi-line dump.

    Args:
        e: the error.
        env_prefix: for a settings validation error, the environment prefix (``DANGERCLIP_``) so each bad
            field is named as the variable the user set.
        max_chars: a longer message is cut there.
    """
    lines = _pydantic_lines(e, env_prefix)
    if lines is not None:
        text = "; ".join(lines)
    elif isinstance(e, FileNotFoundError) and e.filename:  # raised by open() & co: "[Errno 2] ..." is noise
        text = f"no such file or folder: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    out = [line.strip() for line in text.strip().splitlines() if line.strip()][:2]
    joined = "\n".join(out)
    return joined if len(joined) <= max_chars else joined[: max_chars - 1] + "…"


def run_command(name: str, run: Callable[[Any], int | None], ns: Any, verbose: int = 0, env_prefix: str = "") -> int:
    """Run a subcommand under the error contract (``dangerclip.runtime.errors``).

    A user mistake: one or two lines on stderr, exit 2 (the traceback only with ``-v``). An internal error: said
    to be one, with its traceback, exit 1. Ctrl-C: exit 130 without a traceback.

    Args:
        name: the subcommand, for the messages' prefix.
        run: the subcommand's ``run(args)``.
        ns: its parsed arguments.
        verbose: ``-v`` count; with one, a user mistake's traceback is printed too.
        env_prefix: for settings errors, the environment prefix, so a bad field is named as its variable.
    """
    try:
        return int(run(ns) or 0)
    except KeyboardInterrupt:
        print(f"dangerclip {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):  # raise SystemExit("message"): a refusal worded for the user
            print(e.code if e.code.startswith("dangerclip") else f"dangerclip {name}: {e.code}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc()
        print(f"dangerclip {name}: {user_message(e, env_prefix=env_prefix)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # noqa: BLE001 - the contract's other half: say it is ours, keep the traceback
        traceback.print_exc()
        print(
            f"dangerclip {name}: internal error ({type(e).__name__}: {user_message(e)}); the traceback above "
            "is for a bug report",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
