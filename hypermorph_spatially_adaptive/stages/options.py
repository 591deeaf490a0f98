"""Typed options for the stages: a dataclass per script generated from its parser, and the call of a stage with
such options instead of a command line.

An options class has one keyword-only field per flag (the flag's dest and default; ``config`` and ``dry_run``,
which belong to the command line, left out), so a new flag is a new field and the two cannot drift.
:func:`call_stage` converts and checks every field as the command line checks its flag, holds the lock of ``out``
(:mod:`.run_folder`) and runs the stage; errors are raised, not turned into exit codes.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path
from typing import Any, Callable

from ..data.file_limits import voxel_limit
from .cli import flag_actions, flag_value, output_folder

__all__ = ["COMMAND_LINE_ONLY", "options_class", "options_namespace", "call_stage", "read_rows"]

#: Flags of the command line only: a file of defaults and the printed plan.
COMMAND_LINE_ONLY = ("config", "dry_run")


def _field_type(action: argparse.Action) -> Any:
    if isinstance(action.default, bool) and action.nargs == 0:
        return bool
    single = action.type if action.type in (int, float) else str
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int) or isinstance(action, argparse._AppendAction)
    return (list[single] | None) if many else (single | None if action.default is None else single)


def options_class(name: str, build_parser: Callable[[], argparse.ArgumentParser], what: str, module: str) -> type:
    """A keyword-only frozen dataclass ``module.name`` with one field per flag of ``build_parser()`` (its dest and
    default); ``what`` names the stage in its docstring."""
    parser = build_parser()
    fields, lines = [], []
    for dest, action in flag_actions(parser).items():
        if dest in COMMAND_LINE_ONLY:
            continue
        default = action.default
        value = (dataclasses.field(default_factory=lambda d=tuple(default): list(d)) if isinstance(default, list)
                 else dataclasses.field(default=default))
        fields.append((dest, _field_type(action), value))
        flag = max(action.option_strings, key=len)
        lines.append(f"    {dest} ({flag}, default {default!r}): {action.help or ''}".rstrip(": "))
    cls = dataclasses.make_dataclass(name, fields, kw_only=True, frozen=True)
    cls.__module__ = module  # where the class is assigned, so that its instances pickle
    cls.__doc__ = f"Options of {what}, one per flag:\n\n" + "\n".join(lines)
    cls.build_parser = staticmethod(build_parser)
    return cls


def options_namespace(options: Any) -> argparse.Namespace:
    """The command line's namespace for ``options``: every field converted and checked as its flag would be."""
    parser = options.build_parser()
    args = parser.parse_args([])  # the defaults, including those a parser sets without a flag (model_type)
    actions = flag_actions(parser)
    for name, value in dataclasses.asdict(options).items():
        setattr(args, name, flag_value(parser, actions[name], value, f"{type(options).__name__}.{name}"))
    return args


def call_stage(options: Any, work: Callable[[argparse.Namespace], Any], stage: str) -> tuple[argparse.Namespace, Any]:
    """Run ``work`` on the namespace of ``options`` with the lock of its ``out`` held (as ``stage``); the namespace
    and ``work``'s return value."""
    args = options_namespace(options)
    with voxel_limit(getattr(args, "max_voxels", None)), output_folder(args, stage):
        return args, work(args)


def read_rows(path: Path, text_columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A CSV's rows: the cells of ``text_columns`` as read, the others as floats (None where empty)."""
    def value(key: str, text: str) -> Any:
        if key in text_columns:
            return text
        return None if text == "" else float(text)

    with path.open(newline="") as handle:
        return [{key: value(key, text) for key, text in row.items()} for row in csv.DictReader(handle)]
