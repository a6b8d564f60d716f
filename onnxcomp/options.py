"""Typed options: one declaration per option, checked the same way from every face.

A pass (and the run itself) declares its options as a frozen dataclass whose fields are made with
:func:`option` (default, one-line help, range, choices).  From that one declaration:

* the CLI makes a flag per field (``time_limit`` -> ``--time-limit``, help text, range and choices);
* the ``--config`` loader accepts the field name as a key (``time_limit = 60``);
* ``onnxcomp.compress(**options)`` accepts it as a keyword.

Values from all three are checked by :meth:`OptionSpec.check`, which converts them to the declared type
and raises :class:`~onnxcomp.errors.OptionError` naming the option; each face relabels the error in its
own vocabulary (a flag, a key in a file, a keyword).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError

_META = "onnxcomp.option"


@dataclass(frozen=True)
class OptionSpec:
    """One option: its long name, value type and constraints, for every face."""

    name: str
    type: type
    default: Any
    help: str
    optional: bool = False
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    short: str | None = None
    metavar: str | None = None
    owners: tuple = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    # ---- describing -------------------------------------------------------------------------
    def expectation(self) -> str:
        """What a valid value looks like, in words ("a number > 0", "one of a, b, c")."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        noun = {int: "a whole number", float: "a number", str: "a string"}[self.type]
        limits = []
        if self.gt is not None:
            limits.append(f"> {self.gt:g}")
        if self.min is not None:
            limits.append(f">= {self.min:g}")
        if self.lt is not None:
            limits.append(f"< {self.lt:g}")
        if self.max is not None:
            limits.append(f"<= {self.max:g}")
        return noun + (" " + " and ".join(limits) if limits else "")

    def default_text(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)

    # ---- checking ---------------------------------------------------------------------------
    def check(self, value: Any) -> Any:
        """``value`` converted to the declared type and checked; ``OptionError`` naming the option if not."""
        if value is None:
            if self.optional or self.default is None:
                return None
            raise OptionError(self.name, f"expected {self.expectation()}, got nothing")
        converted = self._convert(value)
        if self.choices is not None and converted not in self.choices:
            raise self._fail(value)
        if self.type in (int, float):
            bad = ((self.min is not None and converted < self.min) or (self.max is not None and converted > self.max)
                   or (self.gt is not None and converted <= self.gt) or (self.lt is not None and converted >= self.lt))
            if bad:
                raise self._fail(value)
        return converted

    def _fail(self, value: Any) -> OptionError:
        # a string value of a text option is quoted (--solver 'cplex'); a number or a number written as
        # text on the command line is shown as given (--sparsity 1.5)
        shown = repr(value) if isinstance(value, str) and (self.type is str or not _numeric(value)) else str(value)
        return OptionError(self.name, f"expected {self.expectation()}", shown)

    def _convert(self, value: Any) -> Any:
        t = self.type
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise self._fail(value)
        if t is str:
            if isinstance(value, str):
                return value
            raise self._fail(value)
        if isinstance(value, bool):
            raise self._fail(value)
        if isinstance(value, str):
            try:
                number = int(value) if t is int else float(value)
            except ValueError:
                if t is int:
                    try:
                        number = float(value)
                    except ValueError:
                        raise self._fail(value) from None
                else:
                    raise self._fail(value) from None
        elif isinstance(value, numbers.Real):
            number = value
        else:
            raise self._fail(value)
        if t is int:
            if isinstance(number, float) or not isinstance(number, numbers.Integral):
                f = float(number)
                if not math.isfinite(f) or f != int(f):
                    raise self._fail(value)
                return int(f)
            return int(number)
        f = float(number)
        if math.isnan(f):
            raise self._fail(value)
        return f


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None, gt: float | None = None,
           lt: float | None = None, choices=None, short: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field declaring an option (see the module docstring)."""
    meta = {"help": help, "min": min, "max": max, "gt": gt, "lt": lt,
            "choices": tuple(choices) if choices is not None else None, "short": short, "metavar": metavar}
    return field(default=default, metadata={_META: meta})


def _value_type(hint) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a field annotation like ``float | None``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"option type {hint} must be one type, optionally with None")
        return _value_type(args[0])[0], True
    if hint not in (int, float, str, bool):
        raise TypeError(f"option type {hint} is not int, float, str or bool")
    return hint, False


def specs(cls: type, owner: str = "") -> list[OptionSpec]:
    """The options an options dataclass declares, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with onnxcomp.options.option()")
        base, optional = _value_type(hints[f.name])
        out.append(OptionSpec(f.name, base, f.default, meta["help"], optional, meta["min"], meta["max"], meta["gt"],
                              meta["lt"], meta["choices"], meta["short"], meta["metavar"], (owner,) if owner else ()))
    return out


def build(cls: type, values: dict) -> Any:
    """An instance of options dataclass ``cls`` from ``values`` (declared names only; each checked)."""
    known = {s.name: s for s in specs(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise OptionError(unknown[0], "unknown option")
    return cls(**{name: known[name].check(v) for name, v in values.items()})


def merge_specs(groups: list[list[OptionSpec]]) -> dict[str, OptionSpec]:
    """One spec per option name across several declarations (passes may share an option, e.g. ``score``).

    Shared options must agree on the value type; their choices are united (each pass still checks its own
    when it runs), and the default shown is kept only when every declaration has the same one."""
    merged: dict[str, OptionSpec] = {}
    for group in groups:
        for spec in group:
            have = merged.get(spec.name)
            if have is None:
                merged[spec.name] = spec
                continue
            if have.type is not spec.type:
                raise TypeError(f"option {spec.name!r} is declared as {have.type.__name__} by {have.owners} "
                                f"and as {spec.type.__name__} by {spec.owners}")
            choices = None
            if have.choices is not None and spec.choices is not None:
                choices = have.choices + tuple(c for c in spec.choices if c not in have.choices)
            merged[spec.name] = dataclasses.replace(
                have, owners=have.owners + spec.owners, choices=choices,
                default=have.default if have.default == spec.default else None,
                optional=have.optional or spec.optional or have.default != spec.default,
                min=None if have.min != spec.min else have.min, max=None if have.max != spec.max else have.max,
                gt=None if have.gt != spec.gt else have.gt, lt=None if have.lt != spec.lt else have.lt)
    return merged
