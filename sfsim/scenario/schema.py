"""Load YAML into validated pydantic dataclasses, turning every problem into one ``ConfigError`` line.

Shared by scenario files, latency profiles and plan files so that they all report errors alike:
``profiles/edge.yaml: devices[2].uplink.bandwidth: '50 Mbs' is not a bandwidth; write e.g. '50 Mbps' ...``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

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


MAX_NAME = 64
"""Characters in a device or server name (names become file names: logs, device state)."""
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_name(value: str) -> str:
    """A device or server name is a safe file name: letters, digits, ``.``, ``_``, ``-``; not starting with ``.``.

    Names become parts of paths (``OUT/logs/<device>.log``, ``OUT/state/<device>.safetensors``), so
    ``../x``, ``/etc/x`` or an empty name must never reach them.

    Example:
        >>> check_name("jetson-nano_2")
        'jetson-nano_2'
    """
    if not isinstance(value, str) or not value:
        raise ValueError("a name must not be empty; write e.g. name: jetson-nano")
    if len(value) > MAX_NAME:
        raise ValueError(f"{shorten(value, 40)!r} has {len(value)} characters; a name has at most {MAX_NAME}")
    if not _NAME.fullmatch(value):
        raise ValueError(f"{shorten(value, 40)!r} is not a safe name; use letters, digits, '.', '_' and '-', "
                         "not starting with '.' (names become file names)")
    return value


Name = Annotated[str, AfterValidator(check_name)]
"""A device or server name (:func:`check_name`)."""


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
        msg = f"{msg} (got {shorten(repr(err['input']))})"
    return key_path(loc), shorten(msg, MAX_MESSAGE)


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

# Bounds on a YAML file, so that no file can hang a command or flood the terminal:
MAX_FILE_BYTES = 64 * 2**20  # a 100,000-device fleet written out device by device is ~20 MiB
MAX_VALUES = 2_000_000  # values once aliases are expanded (a "billion laughs" file expands to 10^9)
MAX_ALIASES = 10_000  # references to an anchored list or mapping (scenario files use a handful)
MAX_MESSAGE = 300  # characters of an error's problem text; longer inputs are cut with "..."


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with ``...`` (an error line never prints a whole input).

    Example:
        >>> shorten("x" * 100, 10)
        'xxxxxxx...'
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expansion(data: Any, file: str) -> None:
    """Refuse data whose aliases expand past :data:`MAX_VALUES` values or that uses more than
    :data:`MAX_ALIASES` of them; counted once per distinct object, so a bomb is caught in microseconds."""
    sizes: dict[int, int] = {}
    aliases = 0

    def size(node: Any) -> int:
        nonlocal aliases
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:  # the same object again: an alias (YAML builds a new one for each literal)
            aliases += 1
            return sizes[key]
        sizes[key] = 0  # a recursive alias counts as one value, not forever
        children = node.values() if isinstance(node, dict) else node
        total = min(1 + sum(size(c) for c in children), MAX_VALUES + 1)
        sizes[key] = total
        return total

    try:
        total = size(data)
    except RecursionError:
        raise ConfigError(file, "", "nested too deeply; a scenario is a few levels of keys and lists") from None
    if total > MAX_VALUES or aliases > MAX_ALIASES:
        raise ConfigError(file, "", f"its aliases (*name) expand to {'over ' if total > MAX_VALUES else ''}"
                          f"{min(total, MAX_VALUES):,} values through {aliases:,} references; sfsim reads at most "
                          f"{MAX_VALUES:,} values and {MAX_ALIASES:,} references: write the values out")


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, with a one-line error for a missing file, bad syntax or a file past the bounds.

    Raises:
        ConfigError: no such file; larger than :data:`MAX_FILE_BYTES`; invalid YAML; aliases that
            expand past :data:`MAX_VALUES` values (a "billion laughs" file); not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "", "no such file; check the path")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(str(path), "", f"{path.stat().st_size:,} bytes; a scenario file may hold at most "
                          f"{MAX_FILE_BYTES // 2**20} MiB (use count: N for many alike devices)")
    try:
        data = yaml.load(path.read_text(errors="replace"), Loader=_LOADER)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), where, f"invalid YAML: {shorten(problem, MAX_MESSAGE)}") from None
    except RecursionError:
        raise ConfigError(str(path), "", "nested too deeply; a scenario is a few levels of keys and lists") from None
    _check_expansion(data, str(path))
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
