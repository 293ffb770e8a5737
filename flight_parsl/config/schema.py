"""One schema idiom for everything a user writes, with one error format.

The experiment config and its ``key=value`` overrides, site YAML, topology YAML,
presets and job specs are all declared as typed classes (pydantic v2 models, or
standard dataclasses carrying ``__pydantic_config__``) and checked by
:func:`check`. Constraints live in the types (``Annotated[int, Field(gt=0)]``,
``Literal[...]``); checks across keys raise :func:`key_error`. Whatever fails, the
user sees one :class:`~flight_parsl.core.errors.ConfigError` in one format::

    SOURCE: key 'train.epochs' = 0: must be > 0
    SOURCE: unknown key 'train.epoch'; allowed keys in train: epochs, batch_size, ...

where SOURCE is ``config`` (the experiment), ``site file 'PATH'``, ``topology file
'PATH'``, ``job spec 'PATH'``. The command line prints it and exits with status 2.
:func:`json_schema` gives each schema's JSON Schema for editors.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from flight_parsl.core.errors import ConfigError, key_error

T = TypeVar("T")

#: What every schema says about keys: unknown keys are errors; numbers are never silently
#: turned into strings except where a key is text (YAML reads ``slots: 4`` as a number).
STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class Schema(BaseModel):
    """Base of the pydantic-model schemas (site files, topology files, job specs)."""

    model_config = STRICT


def unknown_key_error(source: str, key: str, allowed: list[str], section: str = "") -> ConfigError:
    """The error for a key outside the schema, listing the keys allowed where it stands."""
    where = f" in {section}" if section else ""
    return ConfigError(f"{source}: unknown key {key!r}; allowed keys{where}: {', '.join(allowed)}")


def _comma_split(value: Any) -> Any:
    """A comma-separated string as a list of its stripped, non-empty items, null as the empty
    list, one scalar as a one-item list (``faults.redis_stop=2``); a list as it is."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    return value


#: A list key that also accepts ``"a,b"`` (how ``key=a,b`` and older config files write it).
CommaList = Annotated[list[T], BeforeValidator(_comma_split)]


@functools.lru_cache(maxsize=None)
def _adapter(schema: Any) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


def check(schema: type[T], data: Any, source: str = "config") -> T:
    """Validate ``data`` against ``schema`` and return the typed object.

    Raises:
        ConfigError: in the one format, naming the first bad key, its value and what is allowed.
    """
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as exc:
        raise translate(exc, schema, source) from None


def dump(schema: Any, obj: Any) -> Any:
    """``obj`` as plain data (what a YAML file holds), through the schema's serializers."""
    return _adapter(schema).dump_python(obj, mode="json")


def json_schema(schema: Any) -> dict[str, Any]:
    """The JSON Schema of ``schema`` (for editors and docs)."""
    return _adapter(schema).json_schema()


def fields_of(schema: Any) -> dict[str, Any] | None:
    """Field name -> type hint of a model or dataclass schema, or None for anything else."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return {name: f.annotation for name, f in schema.model_fields.items()}
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema, include_extras=True)
        return {f.name: hints[f.name] for f in dataclasses.fields(schema)}
    return None


def _inner(hint: Any) -> Any:
    """The schema class inside ``Annotated[...]`` or ``X | None``, or the hint itself."""
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and fields_of(args[0]) is not None:
        return args[0]
    return hint


def _walk(schema: Any, loc: tuple[Any, ...]) -> tuple[str, Any]:
    """The dotted key of an error location, and the schema it stops in (union tags skipped)."""
    parts: list[str] = []
    current = schema
    for part in loc:
        if isinstance(part, int):  # a list index
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
            continue
        fields = fields_of(current)
        if fields is None:  # a union member's tag, or a key inside a plain mapping
            continue
        parts.append(str(part))
        current = _inner(fields[part]) if part in fields else None
    return ".".join(parts), current


_PROBLEMS: dict[str, Callable[[dict[str, Any]], str]] = {
    "greater_than": lambda c: f"must be > {c['gt']:g}",
    "greater_than_equal": lambda c: f"must be >= {c['ge']:g}",
    "less_than": lambda c: f"must be < {c['lt']:g}",
    "less_than_equal": lambda c: f"must be <= {c['le']:g}",
    "literal_error": lambda c: f"must be one of {c['expected']}",
    "int_parsing": lambda c: "must be an integer",
    "int_type": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be an integer",
    "float_parsing": lambda c: "must be a number",
    "float_type": lambda c: "must be a number",
    "bool_parsing": lambda c: "must be true or false",
    "bool_type": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string",
    "list_type": lambda c: "must be a list",
    "dict_type": lambda c: "must be a mapping",
    "model_type": lambda c: "must be a mapping",
    "dataclass_type": lambda c: "must be a mapping",
    "model_attributes_type": lambda c: "must be a mapping",
    "dataclass_exact_type": lambda c: "must be a mapping",
    "missing": lambda c: "is required",
    "string_too_short": lambda c: "must not be empty",
    "too_short": lambda c: f"needs at least {c['min_length']} item(s)",
}


def translate(exc: ValidationError, schema: Any, source: str) -> ConfigError:
    """Turn pydantic's error into the one format (the first error only: one message)."""
    errors = exc.errors()
    # a union reports one error per member: prefer the member that got furthest
    err = max(errors, key=lambda e: (e["type"] != "missing", len(e["loc"])), default=errors[0])
    err = errors[0] if err["type"] == "missing" else err
    key, _ = _walk(schema, tuple(err["loc"]))
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        section, parent = _walk(schema, tuple(err["loc"])[:-1])
        return unknown_key_error(source, key, list(fields_of(parent) or {}), section)
    if err["type"] in ("value_error", "assertion_error") and isinstance(err.get("ctx", {}).get("error"), ConfigError):
        return ConfigError(str(err["ctx"]["error"]))
    make = _PROBLEMS.get(err["type"])
    problem = make(err.get("ctx") or {}) if make else str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return ConfigError(f"{source}: key {key!r} is missing (required)")
    return key_error(source, key or "<root>", err.get("input"), problem)
