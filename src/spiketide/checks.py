"""Checks of arguments and recorded settings, in one place low in the stack (no torch).

Each check raises `ConfigError` (an option) or `CheckpointError` (a recorded file) whose message names
what was wrong and how to fix it; the CLI prints it as one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from spiketide.errors import CheckpointError, ConfigError

__all__ = ["check_fields", "field_problem", "json_kind", "check_tau", "check_loss", "is_whole", "whole", "number"]


def is_whole(value: Any) -> bool:
    """An integer, and not a bool (which Python counts as one); a float is never silently truncated."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole(name: str, value: Any, lo: int = 0, hint: str = "") -> int:
    """`value` as a whole number >= lo (bool is not a number); ConfigError naming the option otherwise."""
    if not is_whole(value) or value < lo:
        raise ConfigError(f"{name} must be a whole number >= {lo}{hint}, got {value!r}")
    return int(value)


def number(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False,
           hint: str = "") -> float:
    """`value` as a finite number in [lo, hi] (or (lo, hi] with `lo_open`); ConfigError naming the option otherwise."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and value <= hi)
    if not ok:
        span = ("> " if lo_open else ">= ") + f"{lo:g}" if math.isfinite(lo) else ""
        span += (" and " if span else "") + f"<= {hi:g}" if math.isfinite(hi) else ""
        raise ConfigError(f"{name} must be a finite number{' ' + span if span else ''}{hint}, got {value!r}")
    return float(value)


def check_tau(tau: float) -> float:
    """Eq. 1 divides by tau: any finite non-zero value is allowed (the paper uses 0.75, 2 and 4)."""
    tau = float(tau)
    if tau == 0 or not math.isfinite(tau):
        raise ConfigError(f"LIF time constant tau must be a finite non-zero number, got {tau}: Eq. 1 divides by tau "
                          "(the paper uses 0.75, 2 and 4).")
    return tau


def check_loss(name: str, alpha: float | None, tet_lambda: float | None, losses: Mapping[str, str]) -> None:
    """A training loss by name: 'alpha' needs a finite alpha >= 0 (Eq. 9-10), 'tet' a lambda in [0, 1]; a
    parameter of another loss is refused rather than ignored."""
    if name not in losses:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(losses)}")
    for option, value, owner in (("--alpha", alpha, "alpha"), ("--tet-lambda", tet_lambda, "tet")):
        if value is not None and name != owner:
            raise ConfigError(f"{option} {value} applies only to --loss {owner} (this run uses --loss {name}); drop "
                              f"{option} or pass --loss {owner}")
    if name == "alpha" and (alpha is None or not (0 <= alpha < math.inf)):
        raise ConfigError(f"--loss alpha needs --alpha A, a finite number >= 0 (got {alpha}); paper values are "
                          "1e-4 .. 7e-2")
    if name == "tet" and (tet_lambda is None or not (0 <= tet_lambda <= 1)):
        raise ConfigError(f"--loss tet needs --tet-lambda L with 0 <= L <= 1 (got {tet_lambda}); TET uses 0.05")


# ----------------------------------------------------------------------------- recorded settings (JSON)

def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "whole numbers", float: "numbers", str: "strings"}.get(item, _type_name(item))
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type of a dataclass field (bool is never a number; an int is a float)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:  # (a tuple only ever comes from Python, never from a JSON file)
        return isinstance(value, (list, tuple)) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_whole(value)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, hint)


def field_problem(obj: Mapping, schema: type, optional: Mapping[str, Any] = {}) -> str | None:
    """The first field of the dataclass `schema` that `obj` lacks (and `optional` does not name) or holds with
    another type, said in words ("lacks 'epochs'", "field 'epochs' is "3", not a whole number"); else None."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in obj:
            if f.name not in optional:
                return f"lacks {f.name!r}"
        elif not _fits(obj[f.name], hints[f.name]):
            return f"field {f.name!r} is {_show(obj[f.name])}, not {_type_name(hints[f.name])}"
    return None


def _show(v: Any) -> str:
    try:
        return json.dumps(v)[:80]
    except (TypeError, ValueError):
        return repr(v)[:80]


def check_fields(obj: Any, schema: type, where: str | os.PathLike, optional: Mapping[str, Any] = {}) -> dict:
    """Check a JSON object against a dataclass schema: every field present, each of its declared type.

    A field is required unless named in `optional` (fields added after a file was written: the value is
    what the code that wrote it did, never a guess). Keys the schema lacks are kept. Returns a new dict
    with `optional`'s values filled in; raises CheckpointError naming `where` and the first bad field.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a JSON {json_kind(obj)}, not an object of settings; the file was "
                              "edited or damaged: restore it or start a new run")
    if problem := field_problem(obj, schema, optional):
        hint = " (no default is assumed for a recorded run)" if problem.startswith("lacks") else ""
        raise CheckpointError(f"{where} {problem}{hint}; the file was edited or damaged: restore it or start a new "
                              "run")
    return {**{k: v for k, v in optional.items() if k not in obj}, **obj}


def json_kind(v: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if isinstance(v, (int, float)) else type(v).__name__)


