"""What every training and pseudo-mask subcommand shares: options derived from a dataclass config, and bad
input reported as one line with exit code 2.

A config is a dataclass with a docstring under each field, the idiom ``service.settings`` uses through
pydantic's ``use_attribute_docstrings``. ``add_options`` turns its fields into ``--field-name`` options whose
help is that docstring; every option defaults to "not given" (None), so that ``given_options`` returns only
what the command line says and the dataclass keeps its own defaults (or a config file's values).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import shlex
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Command = Callable[[argparse.Namespace], int]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a (data)class, whitespace folded, as pydantic reads them."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def comma_list(text: str) -> list[str]:
    """``"gun, knife"`` → ``["gun", "knife"]`` (an option type)."""
    return [c.strip() for c in text.split(",") if c.strip()]


def _kind(tp: Any) -> tuple[Any, bool]:
    """``(element type, is a sequence)`` of a field's type; ``X | None`` counts as ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp, args = args[0], list(typing.get_args(args[0]))
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        return (args[0] if args else str), True
    if origin is not None or not isinstance(tp, type):
        raise TypeError(f"no command-line form for {tp!r}; pass its argparse settings in `custom`")
    return tp, False


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    prefix: str = "",
    flags: Mapping[str, Sequence[str]] | None = None,
    custom: Mapping[str, Mapping[str, Any]] | None = None,
    positional: Iterable[str] = (),
    required: Iterable[str] = (),
) -> None:
    """One option per field of the dataclass ``cls``, its help the field's docstring.

    Args:
        parser: where the options go.
        cls: the config dataclass.
        only: these fields (default: all); ``exclude``: not these.
        prefix: a prefix for the flags and the ``dest`` names, for a config nested in another
            (``prefix="pretrain"``: ``--pretrain-steps`` fills ``dest="pretrain.steps"``).
        flags: the option strings of a field when they are not ``--field-name`` (short forms, old names).
        custom: argparse settings that replace the derived ones for a field (``type``, ``nargs``, ``choices``,
            ``default``, ...). A ``default`` here is the command line's own default and is shown in the help.
        positional: fields given as positional arguments; ``required``: options that must be given.

    Booleans become ``--x/--no-x``; lists and tuples take one or more values.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    names = [f.name for f in dataclasses.fields(cls)] if only is None else list(only)
    skip, pos, req = set(exclude), set(positional), set(required)
    flags, custom = flags or {}, custom or {}
    for name in names:
        if name in skip:
            continue
        dest = f"{prefix}.{name}" if prefix else name
        extra = dict(custom.get(name, {}))
        shown = extra.get("default", defaults[name])
        tail = "" if shown is dataclasses.MISSING else f" (default: {shown!r})"
        kw: dict[str, Any] = {"default": None, "help": f"{docs.get(name, '')}{tail}".replace("%", "%%")}
        if "type" in extra or "action" in extra:
            pass
        elif hints[name] is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            elem, many = _kind(hints[name])
            kw["type"] = elem
            if many:
                kw["nargs"] = "+"
        kw.update(extra)
        if name in pos:
            parser.add_argument(dest, **kw)
            continue
        option = "--" + (f"{prefix}-{name}" if prefix else name).replace("_", "-")
        parser.add_argument(*flags.get(name, (option,)), dest=dest, required=name in req, **kw)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def given_options(cls: type, args: argparse.Namespace, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that the command line set (options ``add_options`` made, not left at None)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"{prefix}.{f.name}" if prefix else f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def exits_2_on_bad_input(command: str, *errors: type[BaseException]) -> Callable[[Command], Command]:
    """Make a subcommand's ``run`` report bad data or config as one line and exit code 2, not a traceback.

    Args:
        command: the subcommand's name, which starts the line (``dangerclip train: ...``).
        errors: what counts as bad input; ``ValueError`` (``ManifestError`` is one) and ``FileNotFoundError``
            always do.
    """
    caught: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, *errors)

    def wrap(run: Command) -> Command:
        @functools.wraps(run)
        def wrapped(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except caught as e:
                print(f"dangerclip {command}: {e}", file=sys.stderr)
                return 2

        return wrapped

    return wrap


def command_line(prog: str, add_arguments: Callable[[argparse.ArgumentParser], None], args: argparse.Namespace) -> str:
    """The shortest command line that gives ``args``: ``prog``, the positionals, and each option set away
    from its default. Recorded with a result so that it says how it was made, whatever called ``run``."""
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    words = [prog]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if not action.option_strings:
            words += [str(v) for v in (value if isinstance(value, list) else [value])]
        elif value != action.default:
            words += _option_words(action, value)
    return " ".join([words[0], *(shlex.quote(w) for w in words[1:])])


def _option_words(action: argparse.Action, value: Any) -> list[str]:
    flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else "--no-" + flag[2:]]
    if action.nargs == 0:
        return [flag]
    if action.nargs is None and isinstance(value, list):
        return [flag, ",".join(map(str, value))]  # one word parsed into a list: ``comma_list``
    values = value if isinstance(value, (list, tuple)) else [value]
    return [flag, *(str(v) for v in values)]
