"""Multirun grids from ``key=value`` overrides: comma lists and ranges of any config key.

An override whose value lists several values makes the command a sweep over every
combination (a grid). The rule, for a key of the experiment config:

* ``key=a..b`` (an int key, a <= b): every integer from a to b, both included
  (``seed=0..4`` is 0, 1, 2, 3, 4).
* ``key=[a,b,...]`` (any key): the YAML list's items, one cell each. This is the way
  to sweep a key whose own value is a comma list: ``faults.kill=[1@2,3@4]`` is two
  cells, ``faults.kill=[1@2;3@4]`` is not a list.
* ``key=a,b,...`` (a key whose value is one scalar: int, float, bool or str): one
  cell per item. Keys whose value is itself a comma list (:data:`LIST_VALUED_KEYS`,
  ``faults.kill=1@2,3@4``) keep their commas: that is one value.

Anything else is a plain override. Grid overrides are applied to each cell after the
plain ones, in the order given.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import yaml

from flight_parsl.config.experiment import ExperimentConfig
from flight_parsl.core.errors import ConfigError

#: Keys whose single value is a comma list: never split on commas (use ``key=[...]`` to sweep them).
LIST_VALUED_KEYS = frozenset({"faults.kill", "faults.hang"})

Grid = tuple[tuple[str, tuple[str, ...]], ...]
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
_SCALARS = (int, float, bool, str)


def key_type(key: str) -> Any:
    """The type hint of a dotted config key (None if the key is unknown)."""
    cls: Any = ExperimentConfig
    hint: Any = None
    for part in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        hint = cls = hints[part]
    return hint


def _scalar(hint: Any) -> type | None:
    """The scalar type of a hint (``X | None`` gives X), or None for a section or anything else."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and len(args) == 1:
        hint = args[0]
    return hint if hint in _SCALARS else None


def expand(text: str) -> tuple[str, tuple[str, ...]] | None:
    """The key and the value texts of a grid override, or None for a plain override.

    Raises:
        ConfigError: A range that is empty, or whose key is not an integer key.
    """
    if "=" not in text:
        return None
    key, raw = (part.strip() for part in text.split("=", 1))
    hint = _scalar(key_type(key))
    match = _RANGE.match(raw)
    if match:
        if hint is not int:
            raise ConfigError(f"override {text!r}: a range a..b needs an integer key, {key!r} is not one")
        low, high = int(match[1]), int(match[2])
        if low > high:
            raise ConfigError(f"override {text!r}: range {low}..{high} is empty (a..b needs a <= b)")
        return key, tuple(str(v) for v in range(low, high + 1))
    if raw.startswith("[") and raw.endswith("]"):
        try:
            items = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {text!r}: value is not a valid YAML list ({exc})") from exc
        if not isinstance(items, list) or not items:
            raise ConfigError(f"override {text!r}: a [a,b,...] list needs at least one item")
        return key, tuple(_text(item) for item in items)
    if "," in raw and hint is not None and key not in LIST_VALUED_KEYS:
        items = [item.strip() for item in raw.split(",")]
        if not all(items):
            raise ConfigError(f"override {text!r} has an empty item")
        return key, tuple(items)
    return None


def _text(item: Any) -> str:
    """A YAML list item back as override text."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if item is None:
        return "null"
    return str(item)


def split_overrides(overrides: list[str]) -> tuple[list[str], Grid]:
    """Plain overrides, and the grid of the ones that list several values (in order)."""
    plain: list[str] = []
    grid: list[tuple[str, tuple[str, ...]]] = []
    for text in overrides:
        axis = expand(text)
        if axis is None:
            plain.append(text)
            continue
        if any(key == axis[0] for key, _ in grid):
            raise ConfigError(f"override {text!r}: key {axis[0]!r} is swept twice")
        grid.append(axis)
    return plain, tuple(grid)


def assignments(grid: Grid) -> list[tuple[tuple[str, str], ...]]:
    """Every combination of the grid's values, the last key varying fastest."""
    combos: list[tuple[tuple[str, str], ...]] = [()]
    for key, values in grid:
        combos = [combo + ((key, value),) for combo in combos for value in values]
    return combos


def describe(assignment: tuple[tuple[str, str], ...]) -> str:
    """``key=value key=value``: a cell's grid values, as the results table's ``cell`` column holds them."""
    return " ".join(f"{key}={value}" for key, value in assignment)

