"""Overrides: set a value at a key path of a scenario's raw YAML dict, before it is validated.

A key path names a place in a scenario file the way error messages do (``sfsim simulate --set``,
``sfsim sweep --vary``)::

    training.micro_batch                    a key of a section (created when absent)
    servers[0].flops                        a list item by index
    devices[jetson-nano].uplink.bandwidth   a list item by its name
    devices[*].uplink.bandwidth             every item of the list
    devices[phone].count                    the key 'count' of an item (how many phones)
    servers.count                           how many items the list holds: it grows by copies of
                                            its last item (named NAME-2, NAME-3, ...) or is cut short

Only the structure is checked here (the list, index or name must exist); the values are checked by
the scenario loader afterwards, so a bad value gets the loader's usual one-line error.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from sfsim.errors import ConfigError
from sfsim.scenario.config import scenario_from_dict
from sfsim.scenario.schema import read_yaml, shorten

_PART = r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\[\]]+\])?"
_KEY = re.compile(rf"{_PART}(?:\.{_PART})*")
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\[\]]+)\])?")
MAX_ITEMS = 10_000
"""Most entries a ``servers.count``/``devices.count``-style resize may ask for (each is a copy)."""
_EXAMPLE = "write e.g. devices[phone].uplink.bandwidth, servers[0].flops or training.micro_batch"


@dataclass(frozen=True)
class Step:
    """One part of a key path: a key, and which list items it picks (``None``: not a list pick)."""

    key: str
    select: str | None = None

    def __str__(self) -> str:
        return self.key if self.select is None else f"{self.key}[{self.select}]"


def parse_key(text: str, option: str = "--set") -> tuple[Step, ...]:
    """Split a key path into steps.

    Raises:
        ConfigError: the text is not a key path (names the option it came from).

    Example:
        >>> parse_key("devices[*].uplink.bandwidth")
        (Step(key='devices', select='*'), Step(key='uplink', select=None), Step(key='bandwidth', select=None))
    """
    text = text.strip()
    if not _KEY.fullmatch(text):
        raise ConfigError(None, option, f"{shorten(repr(text))} is not a key path; {_EXAMPLE}")
    return tuple(Step(m.group(1), m.group(2).strip() if m.group(2) else None) for m in _STEP.finditer(text))


def split_assignment(text: str, option: str = "--set") -> tuple[str, str]:
    """``'servers[0].flops=200 TFLOPS' -> ('servers[0].flops', '200 TFLOPS')``, the key checked."""
    key, eq, value = text.partition("=")
    if not eq or not value.strip():
        raise ConfigError(None, option, f"{shorten(repr(text))} has no value; write KEY=VALUE, e.g. "
                          "devices[*].uplink.bandwidth=100 Mbps")
    parse_key(key, option)
    return key.strip(), value.strip()


def parse_value(text: str, option: str = "--set"):
    """A value as YAML reads it: ``'8' -> 8``, ``'true' -> True``, ``'100 Mbps'`` stays a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(None, option, f"cannot read the value {shorten(repr(text))}; write a number, a quantity "
                          "('100 Mbps') or a word") from None


def parse_sets(texts: Iterable[str], option: str = "--set") -> list[tuple[str, object]]:
    """``['servers[0].flops=200 TFLOPS'] -> [('servers[0].flops', '200 TFLOPS')]``, each checked."""
    return [(k, parse_value(v, option)) for k, v in (split_assignment(t, option) for t in texts)]


def load_scenario_with(path, overrides: Iterable[tuple[str, object]], option: str = "--set"):
    """Read a scenario file, apply ``overrides`` to its YAML and validate it like ``load_scenario``.

    A bad overriding value gets the loader's one-line error, which then says the override applied.
    """
    overrides = list(overrides)
    data = apply(read_yaml(path), overrides, file=str(path))
    try:
        return scenario_from_dict(data, source=str(path))
    except ConfigError as err:
        if not overrides:
            raise
        raise ConfigError(err.file, err.key, f"{err.problem} (with {option} applied)") from None


def set_value(data: dict, key: str, value, file: str | None = None) -> None:
    """Set ``value`` at the key path ``key`` of ``data`` in place (see the module docstring).

    Raises:
        ConfigError: the path names a list item or a section that the scenario does not have.

    Example:
        >>> d = {"servers": [{"name": "a", "flops": 1}]}
        >>> set_value(d, "servers.count", 2); [s["name"] for s in d["servers"]]
        ['a', 'a-2']
    """
    _set(data, parse_key(key), value, "", file)


def apply(data: dict, overrides: Iterable[tuple[str, object]], file: str | None = None) -> dict:
    """A deep copy of ``data`` with every ``(key, value)`` of ``overrides`` set, in order."""
    out = copy.deepcopy(data)
    for key, value in overrides:
        set_value(out, key, value, file)
    return out


def _set(node, steps: tuple[Step, ...], value, path: str, file: str | None) -> None:
    step, rest = steps[0], steps[1:]
    here = f"{path}.{step.key}" if path else step.key
    if not isinstance(node, dict):
        raise ConfigError(file, path, f"is not a section with keys, so it has no {step.key!r}; {_EXAMPLE}")
    child = node.get(step.key)
    if step.select is not None:
        if not isinstance(child, list):
            raise ConfigError(file, here, f"is not a list, so [{step.select}] picks nothing; drop the brackets")
        for item in _pick(child, step.select, here, file):
            if not rest:
                raise ConfigError(file, f"{here}[{step.select}]", "name a key inside the item, e.g. "
                                  f"{here}[{step.select}].count")
            _set(item, rest, value, f"{here}[{step.select}]", file)
        return
    if isinstance(child, list):
        if not rest and isinstance(value, list) and not any(isinstance(it, dict) for it in child):
            node[step.key] = value  # a list of plain values (lora.targets) is replaced whole: [qkv, mlp]
            return
        if [s.key for s in rest] == ["count"] and rest[0].select is None:
            node[step.key] = _resized(child, value, f"{here}.count", file)
            return
        raise ConfigError(file, here, f"is a list; pick items with {here}[0], {here}[NAME] or {here}[*], "
                          f"or set how many with {here}.count")
    if not rest:
        node[step.key] = value
        return
    if child is None:
        child = node[step.key] = {}
    _set(child, rest, value, here, file)


def _pick(items: list, select: str, here: str, file: str | None) -> list:
    if select == "*":
        return items
    if re.fullmatch(r"-?\d+", select):
        i = int(select)
        if not -len(items) <= i < len(items):
            raise ConfigError(file, f"{here}[{select}]", f"there are {len(items)} items; use an index "
                              f"0..{len(items) - 1}, a name or *")
        return [items[i]]
    found = [it for it in items if isinstance(it, dict) and it.get("name") == select]
    if not found:
        names = [str(it.get("name")) for it in items if isinstance(it, dict)]
        raise ConfigError(file, f"{here}[{select}]", f"no item named {shorten(repr(select))}; names are: "
                          f"{shorten(', '.join(names), 200)}")
    return found


def _resized(items: list, value, where: str, file: str | None) -> list:
    """``items`` cut to ``value`` entries or grown by renamed copies of the last one."""
    n = value
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(n, str) and n.strip().isdecimal():  # not isdigit: '¹' is a digit that int() refuses
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(file, where, f"{shorten(repr(value))} is not a whole number >= 1; write e.g. {where}=2")
    if n > MAX_ITEMS:  # copies are made before the scenario's own bounds are checked
        raise ConfigError(file, where, f"{n:,} entries; at most {MAX_ITEMS:,}")
    out = [copy.deepcopy(it) for it in items[:n]]
    last = items[-1]
    names = {it.get("name") for it in out if isinstance(it, dict)}
    j = 2
    while len(out) < n:
        new = copy.deepcopy(last)
        if isinstance(new, dict) and "name" in new:
            while f"{last['name']}-{j}" in names:
                j += 1
            new["name"] = f"{last['name']}-{j}"
            names.add(new["name"])
        out.append(new)
    return out
