"""Multirun grids from ``key=value`` overrides: the key's type decides the grammar.

An override whose value lists several values makes the command a sweep over every
combination (a grid). For a key of the experiment config:

* a scalar key (int, float, bool, str):
  ``key=a,b,...`` and ``key=[a,b,...]`` give one cell per item; ``key=a..b`` (an int key,
  a <= b) every integer from a to b, both included (``seed=0..4`` is 0, 1, 2, 3, 4).
* a list key (``sites.files``, ``peer.private_models``, ``faults.kill``, ``faults.hang``,
  ``faults.kill_slots``, ``faults.redis_stop``, ``faults.slow``): ``key=a,b`` and
  ``key=[a,b]`` are ONE value, a two-item list; it is never split into a sweep. Sweeping
  it needs a list of lists: ``key=[[a,b],[c]]`` is two cells.

Anything else is a plain override. Grid overrides are applied to each cell after the
plain ones, in the order given.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

import yaml

from flight_parsl.config.experiment import ExperimentConfig
from flight_parsl.config.schema import fields_of
from flight_parsl.core.errors import ConfigError

Grid = tuple[tuple[str, tuple[str, ...]], ...]
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
_SCALARS = (int, float, bool, str)


def _strip(hint: Any) -> Any:
    """A hint without ``Annotated[...]`` and without ``None`` in a union of one other type."""
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not list and len(args) == 1:
        return _strip(args[0])
    return hint


def key_type(key: str) -> Any:
    """The type hint of a dotted config key, ``Annotated`` and ``| None`` stripped (None if unknown)."""
    hint: Any = ExperimentConfig
    for part in key.split("."):
        fields = fields_of(hint)
        if fields is None or part not in fields:
            return None
        hint = _strip(fields[part])
    return hint


def is_list_key(key: str) -> bool:
    """Whether a config key's value is a list (its ``a,b`` is one value, not a sweep)."""
    return typing.get_origin(key_type(key)) is list


def _scalar(hint: Any) -> type | None:
    """The scalar type of a hint: a scalar, a ``Literal`` of scalars (str), or a union with one."""
    if hint in _SCALARS:
        return hint
    if typing.get_origin(hint) is typing.Literal:
        return str
    members = [_scalar(_strip(a)) for a in typing.get_args(hint)]
    return next((m for m in members if m is not None), None) if members else None


def expand(text: str) -> tuple[str, tuple[str, ...]] | None:
    """The key and the value texts of a grid override, or None for a plain override.

    Raises:
        ConfigError: A range that is empty, or whose key is not an integer key.
    """
    if "=" not in text:
        return None
    key, raw = (part.strip() for part in text.split("=", 1))
    if is_list_key(key):
        return _list_axis(text, key, raw)
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
        return key, tuple(_text(item) for item in _yaml_list(text, raw))
    if "," in raw and hint is not None:
        items = [item.strip() for item in raw.split(",")]
        if not all(items):
            raise ConfigError(f"override {text!r} has an empty item")
        return key, tuple(items)
    return None


def _yaml_list(text: str, raw: str) -> list[Any]:
    try:
        items = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not a valid YAML list ({exc})") from exc
    if not isinstance(items, list) or not items:
        raise ConfigError(f"override {text!r}: a [a,b,...] list needs at least one item")
    return items


def _list_axis(text: str, key: str, raw: str) -> tuple[str, tuple[str, ...]] | None:
    """A list key sweeps only over a list of lists: ``key=[[a,b],[c]]``."""
    if not (raw.startswith("[[") and raw.endswith("]")):
        return None
    items = _yaml_list(text, raw)
    if not all(isinstance(item, list) for item in items):
        raise ConfigError(f"override {text!r}: {key!r} is a list key; sweep it with a list of lists, "
                          f"e.g. {key}=[[a,b],[c]]")
    return key, tuple(_text(item) for item in items)


def _text(item: Any) -> str:
    """A YAML list item back as override text."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if item is None:
        return "null"
    if isinstance(item, list):
        return "[" + ", ".join(_text(i) for i in item) + "]"
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

