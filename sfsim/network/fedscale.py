"""FedScale client availability traces: the ``client_behave_trace`` pickle as device availability.

FedScale (Lai et al., OSDI 2022) ships a trace of when mobile clients are online, as a pickled dict
client id -> ``{'active': [t0, t1, ...], 'inactive': [u0, u1, ...], 'finish_time': T, 'duration': ...,
'model': ...}`` (times in seconds). FedScale reads it in ``fedscale/cloud/client_manager.py`` and
``ClientMetadata.is_active`` says a client is online at ``t`` when
``active[k] <= t mod finish_time <= inactive[k]`` for some ``k``: the trace repeats with period
``finish_time``. Here client ``c`` is online on ``[active[k], inactive[k])`` of every period (empty
windows, ``active[k] == inactive[k]``, are dropped); a client with no window is never online. Only
``active``, ``inactive`` and ``finish_time`` are read.

A device type takes clients in one of two ways (``availability: {fedscale: FILE, client: ID}``):

* ``client: ID`` (a key of the trace): device ``i`` of the type (``phone-i``; ``i = 0`` for a type
  of count 1) takes the trace's ``i``-th client counting from ``ID`` in the file's key order (the
  order FedScale lists them in).
* no ``client``: a seeded draw: the type's devices take distinct clients from a permutation of the
  trace's clients seeded by ``training.seed`` and the type name.

Either way the devices of one type get distinct clients; a type with more devices than the trace
has clients is an error. The file is never passed to plain ``pickle.load``: a restricted unpickler
refuses every class (a trace is dicts, lists, numbers and strings, which need none).
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import random
from pathlib import Path

from sfsim.errors import ConfigError
from sfsim.network.linkrate import Rate, Steps

MAX_BYTES = 1 << 30  # 1 GiB: FedScale's own trace of 107,749 clients is far smaller


class _DataOnly(pickle.Unpickler):
    """An unpickler for plain data: any class or global a pickle names is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}, and only dicts, lists, numbers and strings "
                                     "are read")


def read_trace(path: Path, file: str | None = None, key: str = "fedscale") -> dict:
    """Read a ``client_behave_trace`` pickle (plain data only); one-line :class:`ConfigError` otherwise."""
    stamp = path.stat().st_mtime_ns if path.is_file() else -1
    return _read_trace(path, stamp, file, key)


@functools.lru_cache(maxsize=4)
def _read_trace(path: Path, stamp: int, file: str | None, key: str) -> dict:
    """:func:`read_trace`, read once per file version (every device of a fleet asks for it)."""
    if stamp < 0:
        raise ConfigError(file, key, f"no such file {str(path)!r} (paths are relative to the scenario file)")
    if path.stat().st_size > MAX_BYTES:
        raise ConfigError(file, key, f"{path.name} is larger than {MAX_BYTES >> 20} MiB; not a client_behave_trace")
    try:
        data = _DataOnly(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(file, key, f"{path.name} is not a FedScale client_behave_trace pickle: {why}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(file, key, f"{path.name}: expected a non-empty dict of client id -> "
                          "{'active': [...], 'inactive': [...], 'finish_time': ...}")
    return data


def client_rate(entry, client, file: str | None, key: str, name: str) -> Rate:
    """The 0/1 availability of one trace entry: its windows, repeating every ``finish_time`` seconds."""
    where = f"{name}: client {client!r}"
    if not isinstance(entry, dict) or not {"active", "inactive", "finish_time"} <= set(entry):
        raise ConfigError(file, key, f"{where}: expected a dict with 'active', 'inactive' and 'finish_time'")
    act, ina, period = entry["active"], entry["inactive"], entry["finish_time"]
    if not (isinstance(act, list) and isinstance(ina, list) and len(act) == len(ina)):
        raise ConfigError(file, key, f"{where}: 'active' and 'inactive' must be lists of the same length")
    if not (_number(period) and period > 0) or not all(_number(t) and t >= 0 for t in act + ina):
        raise ConfigError(file, key, f"{where}: times must be numbers >= 0 and finish_time > 0")
    times, rates, last = [], [], 0.0
    for a, b in zip(act, ina, strict=True):
        if b < a or a < last or b > period:
            raise ConfigError(file, key, f"{where}: window [{a}, {b}] is not in time order within "
                              f"[0, finish_time = {period}] (each active <= its inactive <= the next active)")
        last = b
        if b == a:
            continue  # an instant online (FedScale's intervals are closed): no time to work in
        if times and times[-1] == a:  # back-to-back windows: one window
            times.pop()
            rates.pop()
        else:
            times.append(float(a))
            rates.append(1.0)
        times.append(float(b))
        rates.append(0.0)
    if not times:
        return Steps([0.0], [0.0])  # never online (the last rate holds for ever)
    if times[0] > 0:
        times, rates = [0.0] + times, [0.0] + rates
    if times[-1] == period:  # online up to the period's end: the next period starts with its first rate
        times.pop()
        rates.pop()
    return Steps(times, rates, period=float(period))


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def device_index(device: str, dtype: str) -> int:
    """Which device of its type ``device`` is: ``phone-3`` of type ``phone`` is 3; a type of count 1 is 0."""
    if device == dtype:
        return 0
    return int(device.rpartition("-")[2])


@functools.lru_cache(maxsize=16)
def _draw(path: Path, stamp: int, n: int, seed: int, dtype: str) -> tuple[int, ...]:
    """A seeded permutation of the trace's ``n`` client positions for one device type."""
    return tuple(random.Random(f"{seed}:{dtype}:fedscale").sample(range(n), n))


def availability(path: Path, client, device: str, dtype: str, seed: int, file: str | None, key: str) -> Rate:
    """The availability of ``device`` (of type ``dtype``) from a FedScale trace (see the module docstring).

    Args:
        path: the trace file.
        client: the trace key the type's first device takes, or ``None`` for a seeded draw.
        seed: ``training.seed`` (the draw's seed, with ``dtype``).
        file, key: where the availability sits in the scenario, for error messages.
    """
    data = read_trace(path, file, f"{key}.fedscale")
    keys = list(data)
    i = device_index(device, dtype)
    if i >= len(keys):
        raise ConfigError(file, f"{key}.fedscale", f"{path.name} has {len(keys)} clients; device {device!r} would "
                          "need one more: lower the type's count or use a larger trace")
    if client is None:
        pos = _draw(path, path.stat().st_mtime_ns, len(keys), seed, dtype)[i]
    else:
        at = [k for k in range(len(keys)) if keys[k] == client or str(keys[k]) == str(client)]
        if not at:
            raise ConfigError(file, f"{key}.client", f"{path.name} has no client {client!r} (its first ones are "
                              f"{', '.join(repr(k) for k in keys[:3])})")
        pos = at[0] + i
        if pos >= len(keys):
            raise ConfigError(file, f"{key}.client", f"device {device!r} would take client number {pos + 1} from "
                              f"{client!r} on, but {path.name} has {len(keys)}: pick an earlier client")
    return client_rate(data[keys[pos]], keys[pos], file, f"{key}.fedscale", path.name)
