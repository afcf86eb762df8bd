"""Measurement of a real run: FLOPs per role, bytes per link, wall time per phase, memory, trace events.

Everything here is measured, not computed from a formula:

- FLOPs: torch's FLOP counter around each role's compute (:class:`TotalFlopCounter`: the total of
  ``torch.utils.flop_counter.FlopCounterMode`` without its per-module bookkeeping; matmuls, attention
  including the fused CPU kernel torch's counter would score as zero;
  element-wise ops count zero, as in torch's counter; an emulated device counts fused attention's backward
  as the simulator does: :data:`EMULATED_ATTENTION`). The counter costs milliseconds per op on a
  CPU, so work whose FLOPs depend only on shapes passes a ``key`` (e.g. ``(cut, B, T)``): the first
  time a (role, op, key) is seen it is counted, later identical work adds that measured count.
  Micro-batches are trimmed to their longest row, so T changes almost every step; :class:`ShapeFit`
  then gives the count of a new T exactly from counted ones (a transformer's FLOPs are a quadratic in
  T: linear layers B·T·in·out, attention B·H·T²·d), after checking the fit against one more count.
  Optimizer steps and FedAvg are not counted (element-wise only: zero FLOPs in torch's counter).
- Bytes: ``nbytes`` of the tensors that cross a link (activations, masks, labels, gradients, adapters).
- Time: ``time.perf_counter`` around each phase; trace events carry these real starts and durations.
- Memory: the process's peak resident set size (``resource.getrusage().ru_maxrss``). In the
  in-process runtime all roles share one process, so this is the peak of the whole run, not per role.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from fractions import Fraction

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from sfsim.outputs.trace import TraceEvent
from trainer.run.emulation import Lag


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: torch's counter has no formula for the fused CPU attention kernel (it counts it as zero); these are
#: torch's own formulas for the other fused attention kernels, so attention counts the same everywhere.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def _eager_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """A fused attention kernel's backward as the eager path runs it (and :mod:`sfsim.model.flops` prices it):
    torch's count less its first step, the scores' recomputation (``Q K^T`` again), so 2x the forward, not 2.5x."""
    b, h_q, s_q, d_q = query_shape
    recompute = 2 * b * h_q * s_q * d_q * key_shape[2]
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape) - recompute


#: The counter of an emulated device (``--emulate compute``): its rate is the scenario's FLOP/s, which the
#: simulator divides into FLOPs counted as :mod:`sfsim.model.flops` counts them, attention's backward at 2x its
#: forward (the eager path's four matmuls); torch's formulas for the fused kernels add the scores' recomputation
#: (2.5x), which made an emulated device's backward 7.6-8.7% slower than the simulator's for the same rate.
EMULATED_ATTENTION = {**CPU_ATTENTION, **dict.fromkeys(
    (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward,
     torch.ops.aten._scaled_dot_product_efficient_attention_backward,
     torch.ops.aten._scaled_dot_product_flash_attention_backward,
     torch.ops.aten._scaled_dot_product_cudnn_attention_backward), _eager_sdpa_backward)}


#: ops FlopCounterMode lets pass without a look (sizes, strides, layout)
_PASS = {torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
         torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
         torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
         torch.ops.aten.sym_size.default, torch.ops.aten.stride.default, torch.ops.aten.sym_stride.default,
         torch.ops.aten.storage_offset.default, torch.ops.aten.sym_storage_offset.default,
         torch.ops.aten.numel.default, torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
         torch.ops.prim.layout.default}


class TotalFlopCounter(TorchDispatchMode):
    """FlopCounterMode's total, without its per-module breakdown: the same formulas (torch's registry
    plus ``custom``), the same decompositions, the same ops passed over, so the same count.

    FlopCounterMode also tracks which module every op runs in (hooks on every module call, forward
    and backward), which ``Meter`` never reads: on MiniLM's forward + backward it made a step 1.23x
    slower, this counter 1.08x (load 3 on the 2 shared cores). Use as ``with TotalFlopCounter() as c``
    and read ``c.get_total_flops()``.
    """

    def __init__(self, custom: dict | None = None):
        super().__init__()
        custom = CPU_ATTENTION if custom is None else custom
        self.registry = {**flop_registry,
                         **{k: v if getattr(v, "_get_raw", False) else shape_wrapper(v) for k, v in custom.items()}}
        self.total = 0

    def get_total_flops(self) -> int:
        """FLOPs counted so far."""
        return self.total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PASS or isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        if func not in self.registry and func is not torch.ops.prim.device.default:
            with self:  # as FlopCounterMode: count what an op without a formula decomposes into
                out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flop_counter(emulated: bool = False) -> TotalFlopCounter:
    """A counter of FlopCounterMode's total that also counts the fused CPU attention kernel; ``emulated``:
    with fused attention's backward as the simulator counts it (:data:`EMULATED_ATTENTION`)."""
    return TotalFlopCounter(EMULATED_ATTENTION if emulated else CPU_ATTENTION)


def _flat(key) -> tuple:
    """A key with its nested tuples flattened: ``(2, (16, 40))`` -> ``(2, 16, 40)``."""
    out = []
    for k in key:
        out.extend(_flat(k) if isinstance(k, tuple) else [k])
    return tuple(out)


class ShapeFit:
    """Exact FLOP counts of unseen shapes from counted ones, for work whose count is a quadratic in one size.

    A *family* of keys agrees everywhere except at some positions that all hold one value (the
    sequence length T: it appears once in ``(cut, B, T, d)``, several times in a deferred-W
    signature). Three counted members determine the quadratic; a fourth is counted anyway and must
    equal the fit's value, else the family is counted for ever (so a count is never a guess: every
    value this returns was fitted on counts and checked against one more count).
    """

    def __init__(self):
        self.counted: dict[tuple, int] = {}  # flat key -> FLOPs counted
        self.trusted: dict[tuple, bool] = {}  # family -> the check passed (True) or failed (False)

    def add(self, flat: tuple, flops: int) -> None:
        """Record a counted key."""
        self.counted[flat] = flops

    def estimate(self, flat: tuple) -> tuple[tuple, int] | None:
        """(family, fitted FLOPs) of ``flat`` from three counted members of its family, or None."""
        families: dict[tuple, dict[int, int]] = {}
        for g, f in self.counted.items():
            if len(g) != len(flat):
                continue
            diff = tuple(i for i, (a, b) in enumerate(zip(g, flat, strict=True)) if a != b)
            xs, ys = {flat[i] for i in diff}, {g[i] for i in diff}
            if diff and len(xs) == len(ys) == 1 and all(type(v) is int for v in xs | ys):
                fam = (diff, tuple(v for i, v in enumerate(flat) if i not in diff))
                families.setdefault(fam, {})[next(iter(ys))] = f
        x = None
        for fam, pts in families.items():
            if len(pts) < 3 or self.trusted.get(fam) is False:
                continue
            x = flat[fam[0][0]]
            (x0, f0), (x1, f1), (x2, f2) = sorted(pts.items())[-3:]
            val = (Fraction(f0 * (x - x1) * (x - x2), (x0 - x1) * (x0 - x2))  # Lagrange, in exact rationals
                   + Fraction(f1 * (x - x0) * (x - x2), (x1 - x0) * (x1 - x2))
                   + Fraction(f2 * (x - x0) * (x - x1), (x2 - x0) * (x2 - x1)))
            if val.denominator == 1 and val >= 0:
                return fam, int(val)
        return None


def tensor_bytes(obj) -> int:
    """Total ``nbytes`` of the tensors in ``obj`` (a tensor, or a mapping/sequence of them)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class Meter:
    """Collects the measurements of one run.

    Attributes:
        flops: role name (device name or ``"server"``) -> FLOPs counted.
        uplink_bytes / downlink_bytes: device name -> bytes sent on that device's link.
        phase_s: phase name (e.g. ``"device_forward"``, ``"server_B"``) -> seconds.
        server_cpu_s: a server phase (ops on :attr:`server_lane`) -> the computing thread's CPU seconds in it: with one
            torch thread on a CPU, ``phase_s`` minus it is the time the ops waited for a core (``sfsim validate``).
        events: trace events (lanes and ops as in :mod:`sfsim.outputs.trace`), times from the meter's start.
        count_flops: when False, compute is timed but FLOPs are not counted (faster).
        fit_shapes: give new sequence lengths their exact count from counted ones (:class:`ShapeFit`).
        share_devices: a count one device measured serves every device with the same (op, key) (in
            one process: FedLoRA's devices run the same model, SplitLoRA's clients the same cut).
    """

    fit_shapes = True
    share_devices = True

    def __init__(self, server_lane: str = "server", count_flops: bool = True):
        self.server_lane = server_lane
        self.count_flops = count_flops
        self.flops: dict[str, int] = defaultdict(int)
        self.uplink_bytes: dict[str, int] = defaultdict(int)
        self.downlink_bytes: dict[str, int] = defaultdict(int)
        self.phase_s: dict[str, float] = defaultdict(float)
        self.server_cpu_s: dict[str, float] = defaultdict(float)
        self.events: list[TraceEvent] = []
        self._cache: dict[tuple, int] = {}
        self._fit = ShapeFit()
        self.n_counted = 0  # compute blocks run under the FLOP counter (the rest reused or fitted counts)
        self.t0 = time.perf_counter()
        #: lane -> FLOP/s: compute on these lanes is stretched (by sleeping) to take FLOPs / rate seconds
        self.stretch: dict[str, float] = {}
        self.stretched_s = 0.0  # seconds slept to emulate slower devices
        self.lag = Lag()  # how far each emulated op ended after its emulated end (trainer.run.emulation)
        #: lane -> its device's presence (``trainer.transport.dynamics.Presence``): compute there waits for it to be online
        self.presence: dict[str, object] = {}
        self.cpu0 = cpu_seconds()  # this role's CPU is counted from here (not what the process did before)

    def now(self) -> float:
        """Seconds since the meter started."""
        return time.perf_counter() - self.t0

    @contextmanager
    def compute(self, role: str, op: str, phase: str, mb: int = -1, device: str = "",
                lane: str | None = None, key: tuple | None = None, count: bool = True) -> Iterator[None]:
        """Count FLOPs and time of the enclosed compute; add a trace event on ``lane`` (default ``role``).

        Args:
            key: shape signature of the work; identical (role, op, key) work reuses the measured count.
                Devices share counts (:attr:`share_devices`): a device's key must describe its work
                fully (its cut, when devices differ in it).
            count: False for work torch's counter scores as zero (optimizer steps, averaging).
        """
        presence = self.presence.get(lane or role)
        if presence is not None:  # offline: sleep until online (raises DeviceLeft if it never is again)
            asked = self.now()
            online = presence.wait(lane or role)
            if online > asked:  # it slept: how late it woke
                self.lag.record(lane or role, self.now() - online)
        start, cpu = self.now(), time.thread_time()
        stretched = (lane or role) in self.stretch  # counted as the simulator counts (flop_counter(emulated))
        scope = role if role == self.server_lane or not self.share_devices else "device"
        cache_key = None if key is None else (f"{scope}@emulated" if stretched else scope, op, *key)
        flops = 0
        counting = count and (self.count_flops or stretched)
        fit = None
        if counting and cache_key is not None and cache_key not in self._cache and self.fit_shapes:
            fit = self._fit.estimate(_flat(cache_key))
        if counting and cache_key in self._cache:
            yield
            flops = self._cache[cache_key]
        elif counting and fit is not None and self._fit.trusted.get(fit[0]):
            yield
            flops = self._cache[cache_key] = fit[1]
        elif counting:
            counter = flop_counter(stretched)
            with counter:
                yield
            flops = counter.get_total_flops()
            self.n_counted += 1
            if cache_key is not None:
                self._cache[cache_key] = flops
                self._fit.add(_flat(cache_key), flops)
                if fit is not None:  # the family's check: the fit must give exactly what was counted
                    self._fit.trusted[fit[0]] = fit[1] == flops
        else:
            yield
        if self.count_flops:
            self.flops[role] += flops
        if (lane or role) == self.server_lane:
            self.server_cpu_s[phase] += time.thread_time() - cpu
        self._settle(lane or role, op, phase, mb, device, presence, start, flops)

    def _settle(self, lane: str, op: str, phase: str, mb: int, device: str, presence, start: float,
                flops: float) -> None:
        """The end of :meth:`compute`'s work on ``lane`` (started at ``start``): sleep out an emulated speed, record
        how late it ended (:mod:`trainer.run.emulation`), its phase time and trace events."""
        rate = self.stretch.get(lane)
        over = None  # seconds the work ended after its emulated end (None: not emulated)
        if rate and flops:
            # emulate a slower device: sleep (never spin) until the work has taken FLOPs / rate seconds
            extra = flops / rate - (self.now() - start)
            if extra > 0:
                time.sleep(extra)
                self.stretched_s += extra
            over = self.now() - start - flops / rate  # compute slower than emulated, or a late wake-up
        dur = self.now() - start
        if presence is not None:  # the work progressed only online: it ends later, in online parts
            end = presence.finish(lane, start, dur)
            over = max(0.0, over or 0.0) + self.now() - end
            self.lag.record(lane, over)
            for a, b in presence.online_parts(start, end):
                self.phase_s[phase] += b - a
                self.events.append(TraceEvent(lane, op, a, b - a, mb, device))
            return
        if over is not None:
            self.lag.record(lane, over)
        self.phase_s[phase] += dur
        self.events.append(TraceEvent(lane, op, start, dur, mb, device))

    def transfer(self, device: str, nbytes: int, start: float, dur: float, mb: int = -1,
                 down: bool = False, parts: list[tuple[float, float]] | None = None) -> None:
        """Record ``nbytes`` on ``device``'s uplink (or downlink) and its ``send`` trace event (one per
        part ``(start, end)`` when given: the link carried only then)."""
        (self.downlink_bytes if down else self.uplink_bytes)[device] += nbytes
        lane = f"{'downlink' if down else 'link'}:{device}"
        for a, d in [(a, b - a) for a, b in parts] if parts is not None else [(start, dur)]:
            self.phase_s["downlink" if down else "uplink"] += d
            self.events.append(TraceEvent(lane, "send", a, d, mb, device))

    def summary(self, devices: list[str]) -> dict:
        """The measurements as plain JSON-ready data, with the simulator's field names and shapes.

        ``device_flops`` and ``server_flops`` map a lane to FLOP (as in ``SimResult.to_dict``);
        ``*_total`` are their sums; bytes are totals plus ``*_by_device``.
        """
        dev_flops = {d: int(self.flops.get(d, 0)) for d in devices}
        srv_flops = int(self.flops.get(self.server_lane, 0))
        return {
            "device_flops": dev_flops,
            "device_flops_total": int(sum(dev_flops.values())),
            "server_flops": {self.server_lane: srv_flops},
            "server_flops_total": srv_flops,
            "uplink_bytes": int(sum(self.uplink_bytes.values())),
            "downlink_bytes": int(sum(self.downlink_bytes.values())),
            "uplink_bytes_by_device": {d: int(self.uplink_bytes.get(d, 0)) for d in devices},
            "downlink_bytes_by_device": {d: int(self.downlink_bytes.get(d, 0)) for d in devices},
            "phase_s": {k: round(v, 6) for k, v in sorted(self.phase_s.items())},
            "server_cpu_s": {k: round(v, 6) for k, v in sorted(self.server_cpu_s.items())},
            "peak_rss_bytes": peak_rss_bytes(),
            "cpu_s": round(cpu_seconds() - self.cpu0, 3),
            "peak_memory_note": "process peak RSS (ru_maxrss); all roles share one process in-process",
        }
