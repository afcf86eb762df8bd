"""Load YAML into validated pydantic dataclasses, turning every problem into one ``ConfigError`` line.

Shared by scenario files, latency profiles and plan files so that they all report errors alike:
``profiles/edge.yaml: devices[2].uplink.bandwidth: '50 Mbs' is not a bandwidth; write e.g. '50 Mbps' ...``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from sfsim.errors import ConfigError
from sfsim.units import parse_quantity

T = TypeVar("T")

#: pydantic config for every schema class: unknown keys are errors, values are checked on assignment.
STRICT = ConfigDict(extra="forbid", validate_assignment=True)


def _unit(kind: str):
    return BeforeValidator(lambda v: parse_quantity(v, kind))


Bandwidth = Annotated[float, _unit("bandwidth"), Field(gt=0)]
"""Link bandwidth in bit/s (``"50 Mbps"``); must be > 0."""
Seconds = Annotated[float, _unit("time"), Field(ge=0)]
"""A duration in seconds (``"20 ms"``); must be >= 0."""
PositiveSeconds = Annotated[float, _unit("time"), Field(gt=0)]
"""A duration in seconds that must be > 0."""
Bytes = Annotated[float, _unit("size"), Field(gt=0)]
"""A size in bytes (``"4 GiB"``); must be > 0."""
Flops = Annotated[float, _unit("flops"), Field(gt=0)]
"""A sustained compute rate in FLOP/s (``"1.3 TFLOPS"``); must be > 0."""
Watts = Annotated[float, _unit("power"), Field(ge=0)]
"""A power in watts (``"2.5 W"``); must be >= 0."""
JoulesPerBit = Annotated[float, _unit("bit energy"), Field(ge=0)]
"""Radio energy in joules per bit (``"50 nJ/bit"``); must be >= 0."""


def key_path(loc: tuple) -> str:
    """``('devices', 2, 'uplink', 'bandwidth') -> 'devices[2].uplink.bandwidth'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before", "function-after") or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _class_at(cls: Any, loc: tuple) -> Any:
    """The dataclass type found by walking ``loc`` from ``cls`` (for listing allowed keys)."""
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        hint = typing.get_type_hints(cls)[part]
        cls = _innermost_dataclass(hint)
        if cls is None:
            return None
    return cls


def _innermost_dataclass(hint: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _innermost_dataclass(arg)
        if found is not None:
            return found
    return None


def _describe(err: dict, root: Any) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden" or kind == "unexpected_keyword_argument":
        parent = _class_at(root, loc[:-1])
        allowed = ", ".join(f.name for f in dataclasses.fields(parent)) if parent else "see the docs"
        return key_path(loc), f"unknown key; allowed here: {allowed}"
    if kind == "missing" or kind == "missing_argument":
        return key_path(loc), "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    if "input" in err and kind not in ("value_error", "assertion_error"):
        msg = f"{msg} (got {err['input']!r})"
    return key_path(loc), msg


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    """One validator per schema class (building it costs milliseconds; reused by every load)."""
    return TypeAdapter(cls)


def validate(cls: type[T], data: Any, file: str | None = None) -> T:
    """Validate ``data`` (plain dicts/lists from YAML) into ``cls``; raise one-line ``ConfigError``."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        key, problem = _describe(exc.errors()[0], cls)
        raise ConfigError(file, key, problem) from None


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader: ~20x faster where built


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, with a one-line error for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "", "no such file; check the path")
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), where, f"invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a mapping of keys at the top level")
    return data


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
