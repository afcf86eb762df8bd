"""Resuming a run: what it recorded, what is already done, what a resumed run adds, when to checkpoint.

A run folder holds ``run_config.json`` (the settings), ``checkpoint.safetensors`` (the latest
consistent point: weights, optimizer, data cursors and the totals so far) and, once it ends,
``metrics.json`` with ``"finished": true``. ``sfsim run --resume OUT``:

- says there is nothing to do, and touches nothing, when the run finished (exit 0);
- resumes OUT itself, whatever folder ``run_config.json`` recorded (a copy resumes the copy);
- refuses an option given with it that contradicts the recorded run (:func:`contradictions`);
- reports cumulative totals: the checkpoint carries FLOPs, bytes and wall seconds up to it, and
  :func:`add_totals` adds them to what the resumed part measured. Work done after the checkpoint by
  the interrupted attempt is lost and not counted; device forwards already in flight at the
  checkpoint (up to ``buffer`` per device) are counted there and again when the resumed part redoes
  them, as they were spent twice (so are CenLoRA's shards, which each attempt's devices upload once).
  In a distributed run a device's FLOPs and uplink bytes are counted
  on the device: at each checkpoint the server asks every live device to report them
  (:func:`device_reports`), and the checkpoint carries every role's counters as last reported;
- keeps the whole timeline: each checkpoint saves the run's trace events up to it beside it
  (:data:`TRACE_FILE`; a distributed run's device events come with the reports), and the resumed
  run's ``trace.json`` and Gantt show them, a ``resume`` marker, then the resumed part shifted to
  follow (:func:`whole_trace`). The time between the checkpoint and the stop is not on it;
- with several servers, restores each server's own checkpoint (each writes one, only at epoch ends)
  after checking that they are from the same epoch (:func:`agree_across_servers`);
- continues the network from the run's clock at the checkpoint (:func:`start_point`, which server 0 tells
  every process in the rendezvous, so a device on another machine needs no access to the run folder): each
  device starts on the server that held it then, later handovers move onto the resumed attempt's clock, and
  time-varying links and availability continue from that clock (:func:`from_start`); the handovers and
  untrained samples before the checkpoint are carried into ``metrics.json``.

Checkpoints are taken at consistent points (after an optimizer step) every ``--checkpoint-every``
steps and, by default, at least every :data:`CHECKPOINT_S` seconds (:class:`CheckpointClock`), so a
stopped run of more than a few minutes always has something to resume from.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sfsim.errors import SfsimError
from sfsim.outputs.trace import TraceEvent, merge_attempts
from sfsim.scenario.schema import write_atomic
from trainer.methods import Setup
from trainer.methods.checkpoint import (
    CHECKPOINT,
    NEXT,
    cut_files,
    load_checkpoint,
    read_progress,
    save_checkpoint,
)
from trainer.methods.common import full_state, load_full_state
from trainer.transport import dynamics
from trainer.transport.distributed import DistTransport, parse_report
from trainer.transport.rendezvous import Start
from trainer.transport.runtime import Message, PeerLost

CHECKPOINT_S = 120.0
"""Default seconds between time-based checkpoints (``--checkpoint-interval``)."""

FREE_ON_RESUME = ("out", "progress", "threads", "data_dir", "model_cache", "peer_timeout", "checkpoint_every",
                  "checkpoint_s", "log_to", "count_flops", "server_ports")
"""Settings a resumed run may change (where it writes, how it reports, how often it checkpoints);
every other one must equal the recorded run's."""

_COUNTERS = ("flops", "uplink_bytes", "downlink_bytes")

REPORT_S = 4
"""A device has this many peer timeouts to answer a checkpoint with its report (it may have queued work first)."""

TRACE_FILE = "checkpoint_trace.json"
"""Beside the checkpoint: the run's trace events up to it, which a resumed run's ``trace.json`` starts with."""

TRACE_NEXT = "checkpoint_trace.next.json"
"""Several servers: :data:`TRACE_FILE` of a checkpoint written but not yet committed (server 0's gives the run's
clock a resumed run starts from, so it must be the committed checkpoint's)."""


# -- the checkpoint: a consistent point of the server and the stateful devices ------------------------------
def _checkpoint(out: Path, setup: Setup, method, epoch: int, losses: list, evals: list, info: dict,
                elapsed_s: float) -> None:
    """A resumable checkpoint at a consistent point: devices that hold training state save theirs first.

    In a distributed run every live device answers with its report so far (:func:`device_reports`), so
    the totals carried (:func:`carried`) hold every role's FLOPs and bytes as last reported."""
    ckpt = len(losses)
    if isinstance(setup.transport, DistTransport):
        info.setdefault("device_reports", {}).update(device_reports(setup, method, ckpt))
    else:
        method.save_devices(ckpt)
    totals = carried(info["base_totals"], setup.meter, elapsed_s, info.get("device_reports"))
    totals["handovers"] = _handovers(info)
    trace = _save_trace(out, setup, info, epoch, ckpt, TRACE_FILE if method.sync is None else TRACE_NEXT)
    extra, meta = method.server_extra()
    tensors = {**full_state(setup.lm.model, setup.head), **{f"x.{k}": v for k, v in extra.items()}}
    progress = {"epoch": epoch, "cursor": method.cursor, "losses": losses, "evals": evals, "scores": info["scores"],
                "lost": method.lost, "not_trained": method.not_trained, "stream": method.server_stream, "extra": meta,
                "device_checkpoint": ckpt if method.device_stateful else None, "totals": totals,
                "devices": method.live() if method.device_stateful else None}  # those it asked to save (several servers)
    if getattr(method, "cache", None) is not None:  # SplitFrozen's activation cache and who departed (saved_cache)
        progress["cache"] = saved_cache(out, method, float(info.get("clock_s", 0.0)))
    if method.sync is not None:  # several servers: the backhaul's counters (sync every N steps counts across epochs)
        progress["sync"] = {"steps": method.sync.steps, "rounds": method.sync.rounds, "bytes": method.sync.bytes}
    if method.sync is None:
        save_checkpoint(out, tensors, method.optimizers(), progress)
    else:  # several servers: write; once every server has, server 0 commits (the run's commit), then the others
        written = save_checkpoint(out, tensors, method.optimizers(), progress, name=NEXT)
        for turn in (0, 1):
            method.sync.group.all_reduce(torch.zeros(1))  # a barrier over the backhaul links
            if (method.sync.index == 0) == (turn == 0):
                os.replace(trace, Path(out) / TRACE_FILE)  # its trace first: a committed checkpoint's is its own
                os.replace(written, Path(out) / CHECKPOINT)
    if getattr(method, "cache", None) is not None:  # the cache's files the last checkpoint alone counted on
        method.cache.committed()


def saved_cache(out: Path, method, clock_s: float) -> dict:
    """The activation cache at a checkpoint (``trainer.transport.cache``: its micro-batches saved beside it) and the
    departures its server has read (each device's ``gone`` stamp on the run's clock: ``clock_s`` is the run's at this
    attempt's 0), so that a resumed run replays what the interrupted one would have (:func:`restore_cache`)."""
    method.departures.read()  # every gone that has come counts: the resumed attempt will not be sent it again
    return {**method.cache.checkpoint(out), "gone": {n: at + clock_s for n, at in method.departures.at.items()}}


def restore_cache(out: Path, method, state: dict | None, epoch: int, clock_s: float) -> None:
    """Inverse of :func:`saved_cache`.

    Raises:
        SfsimError: the saved micro-batches are missing or not the checkpoint's, or the checkpoint has none (written
            before checkpoints saved the cache: the resumed run would send again what the servers held and train other
            micro-batches than the interrupted one; one line)."""
    if getattr(method, "cache", None) is None:
        return
    if state is None:
        raise SfsimError(f"--resume: the checkpoint in {out} does not hold the activation cache (it predates checkpoints "
                         "that save it), so a resumed run would not replay what this one cached: start the run again")
    try:
        method.cache.restore(out, state, epoch)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error) as err:  # a torn or foreign file
        raise SfsimError(f"--resume: the activation cache saved with the checkpoint in {out} cannot be read ({err}); "
                         "start the run again") from None
    method.departures.at.update({n: float(at) - clock_s for n, at in state["gone"].items()})
    method.departures.resumed = True  # a drop due in this attempt: its instant (Departures.resumed)


def _handovers(info: dict) -> list[dict]:
    """The handovers up to a checkpoint: the earlier attempts' (carried) and this attempt's as its devices last
    reported them, moved from this attempt's clock (which starts at the checkpoint it resumed from) to the run's."""
    shift = float(info.get("clock_s", 0.0))
    mine = [{**h, "at_s": round(h["at_s"] + shift, 9)} for r in (info.get("device_reports") or {}).values()
            for h in r.get("handovers", [])]
    return list((info.get("base_totals") or {}).get("handovers", [])) + mine


def start_point(out: str | Path, legs: dict[str, list[tuple]], names: list[str], varies: bool) -> Start:
    """Server 0 of a resumed run: the run's clock at the checkpoint (``until_s`` of its :data:`TRACE_FILE`) and the
    leg each device of ``names`` was on then (its moves the checkpoints carry; a handover due but not yet taken is
    taken at its next send), which it tells every process (:class:`~trainer.transport.rendezvous.Start`).

    Raises:
        SfsimError: the file is missing or unreadable while the network ``varies`` (handovers, time-varying links
            or availability: they continue from that clock); otherwise the run starts at 0."""
    path = Path(out) / TRACE_FILE
    try:
        clock = float(json.loads(path.read_text())["until_s"])
        if not math.isfinite(clock) or clock < 0:
            raise ValueError(clock)
    except (OSError, ValueError, KeyError, TypeError):
        if not varies:
            return Start()
        raise SfsimError(f"--resume: {path} is missing or unreadable; a run whose network changes over time resumes "
                         "on the run's clock at its checkpoint, which that file records: start the run again") from None
    moved = (checkpoint_totals(out) or {}).get("handovers")  # each device's moves up to the checkpoint
    ks = []
    for name in names:
        k = max((j for j, (at, *_) in enumerate(legs[name]) if at <= clock), default=0)
        if moved is not None:
            k = min(k, sum(h["device"] == name for h in moved))
        ks.append(k)
    return Start(clock, tuple(ks))


def from_start(legs: dict[str, list[tuple]], names: list[str], start: Start) -> dict[str, list[tuple]]:
    """Each device's legs ``(at, rank, uplink rate, downlink rate, ...)`` on this attempt's clock, which starts at
    ``start.clock_s`` of the run's: from the leg it was on, later handovers moved back (one due before is due at
    once, as it was in the interrupted run), rates seen from that clock on (:func:`~trainer.transport.dynamics.
    shifted`). A fresh run's start leaves them as they are.

    Raises:
        SfsimError: ``start`` (server 0's, received) puts a device on a leg it does not have (one line)."""
    clock, ks = start.clock_s, start.legs or (0,) * len(names)
    out = {}
    for name, k in zip(names, ks, strict=True):
        lg = legs[name]
        if k >= max(len(lg), 1):
            raise SfsimError(f"rendezvous: server 0 starts device {name} on its leg {k}, but it has {len(lg)}; "
                             "are all processes on the same scenario?")
        out[name] = [(max(at - clock, 0.0) if j else 0.0, r, *(dynamics.shifted(x, clock) if i < 2 else x
                                                                  for i, x in enumerate(rest)))
                     for j, (at, r, *rest) in enumerate(lg[k:])]
    return out


def resumed_legs(out: str | Path, legs: dict[str, list[tuple]]) -> tuple[float, dict[str, list[tuple]]]:
    """Server 0's :func:`start_point` (with handovers: the file must be there) and :func:`from_start` together:
    the run's clock at the checkpoint, and each device's legs on the resumed attempt's clock."""
    names = list(legs)
    start = start_point(out, legs, names, varies=True)
    return start.clock_s, from_start(legs, names, start)


def varies(scenario, legs: dict[str, list[tuple]]) -> bool:
    """Whether the run's network changes over time as emulated: a handover, a time-varying link or availability."""
    return any(len(lg) > 1 or any(x is not None for x in lg[0][2:4]) for lg in legs.values()) or \
        any(d.availability is not None for d in scenario.devices)


class Resumed:
    """This attempt's legs once server 0 has said where the run starts: ``connect``'s ``visits`` (called with the
    :class:`~trainer.transport.rendezvous.Start` on every rank), then :attr:`legs` and :attr:`start`."""

    def __init__(self, legs: dict[str, list[tuple]], names: list[str]):
        self.full, self.names = legs, names
        self.legs, self.start = legs, Start()

    def __call__(self, start: Start) -> dict[str, list[int]]:
        """Take ``start``; return each device's server ranks from its leg then on."""
        self.start, self.legs = start, from_start(self.full, self.names, start)
        return {n: sorted({r for _, r, *_ in lg}) for n, lg in self.legs.items()}


def device_reports(setup: Setup, method, ckpt: int) -> dict[str, dict]:
    """Distributed checkpoint ``ckpt``: every live device saves its state (when it holds any) and answers
    with its report so far (FLOPs, uplink bytes, events: :func:`trainer.transport.distributed.parse_report`).

    A bad report drops its sender, and so does no answer within :data:`REPORT_S` peer timeouts (a device
    that sends heartbeats but ignores ``save`` cannot stall the run). A device lost meanwhile has no report here: a method whose devices
    hold state loses it now (as :meth:`~trainer.methods.common.Method.save_devices` does); for the others
    the server loop learns of the loss as it would have without the checkpoint (the transport reports it
    again), so micro-batches already received are trained and counted as usual."""
    tr, names, reports = setup.transport, method.live(), {}
    servers = sorted({srv for lg in (getattr(method, "legs", None) or {}).values() for *_, srv in lg} | {setup.server})
    for n in names:
        tr.send_down(Message(n, -1, kind="save", aux=ckpt))
    late = threading.Timer(REPORT_S * tr.peer_timeout, lambda: [
        tr.drop(n, f"no answer to checkpoint {ckpt} within {REPORT_S * tr.peer_timeout:g} s")
        for n in names if n not in reports])  # a device that heartbeats but never answers cannot stall the run
    late.daemon = True
    late.start()
    try:
        for n in names:
            why = _one_report(tr, n, reports, servers)
            if why is None:
                continue
            if method.device_stateful:
                method.lose(n, why)
            else:
                with tr.inbox.cv:
                    tr.inbox.reported.discard(n)  # the server loop's next receive reports the loss once more
    finally:
        late.cancel()
    return reports


def _one_report(tr, name: str, reports: dict, servers: list[str]) -> str | None:
    """Receive ``name``'s report into ``reports``; or why there is none (a bad report drops its sender, and so does
    a handover from or to a server none of the run's legs names: ``servers``)."""
    try:
        reports[name] = parse_report(tr.recv_up(name, {"report"}).tensors["blob"], name, servers)
        return None
    except PeerLost as err:
        return err.reason
    except ValueError as err:
        why = f"bad report: {err}"
        tr.dropped[name] = why
        tr.drop(name, why)
        return why


def _attempt_events(setup: Setup, info: dict) -> list[TraceEvent]:
    """This attempt's events so far: the server's, and in a distributed run its devices' as last reported."""
    reports = (info.get("device_reports") or {}).values()
    return [*setup.meter.events, *(TraceEvent(*e) for r in reports for e in r["events"])]


def whole_trace(info: dict, events: list[TraceEvent], lane: str) -> list[TraceEvent]:
    """The run's events on one timeline: those saved with the checkpoint this attempt resumed from (earlier
    attempts'), a ``resume`` marker, then ``events`` (this attempt's) shifted to follow them."""
    before = info.get("trace_before")
    if before is None:
        return list(events)
    return merge_attempts(before["events"], events, before["until_s"], lane)


def _save_trace(out: Path, setup: Setup, info: dict, epoch: int, ckpt: int, name: str = TRACE_FILE) -> Path:
    """Write the run's events up to this checkpoint beside it (``name``: :data:`TRACE_FILE`, or :data:`TRACE_NEXT`
    until several servers commit), for a resumed run's trace; return its path."""
    events = whole_trace(info, _attempt_events(setup, info), setup.server)
    before = info.get("trace_before")
    until = max([setup.meter.now() + (before["until_s"] if before else 0.0)] + [e.end for e in events])
    write_atomic(Path(out) / name, json.dumps({"epoch": epoch, "steps": ckpt, "until_s": until,
                                               "events": [list(e) for e in events]}))
    return Path(out) / name


def _load_trace(out: Path, progress: dict) -> dict | None:
    """The events saved with the checkpoint in ``out`` (None, with a warning, when absent or from another one)."""
    path = Path(out) / TRACE_FILE
    try:
        saved = json.loads(path.read_text())
        if (saved["epoch"], saved["steps"]) == (progress["epoch"], len(progress["losses"])):
            return {"until_s": float(saved["until_s"]), "events": [TraceEvent(*e) for e in saved["events"]]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"warning: {path} is missing or not from the checkpoint: trace.json shows only the resumed part",
          file=sys.stderr, flush=True)
    return None


def _restore(out: Path, setup: Setup, method, losses: list, evals: list, info: dict) -> int:
    """Load the checkpoint in ``out`` into the model, optimizers and RNG; return the epoch to start.

    ``info`` gets the checkpoint's scores and the totals before it (``base_totals``)."""
    if not method.resumable:
        raise SfsimError(f"--resume is not supported for {method.name}")
    weights, progress = load_checkpoint(out, method.optimizers())
    load_full_state(setup.lm.model, setup.head, {k: v for k, v in weights.items() if not k.startswith("x.")})
    method.load_server_extra({k[2:]: v for k, v in weights.items() if k.startswith("x.")}, progress["extra"])
    losses[:], evals[:], info["scores"][:] = progress["losses"], progress["evals"], progress.get("scores", [])
    info["base_totals"] = progress.get("totals")
    info["trace_before"] = _load_trace(out, progress)
    method.lost, method.server_stream = progress["lost"], [tuple(x) for x in progress["stream"]]
    method.not_trained = {k: int(v) for k, v in progress.get("not_trained", {}).items()}  # earlier epochs' leaves
    if method.sync is not None and "sync" in progress:
        method.sync.steps, method.sync.rounds, method.sync.bytes = (int(progress["sync"][k]) for k in
                                                                     ("steps", "rounds", "bytes"))
    restore_cache(out, method, progress.get("cache"), progress["epoch"], float(info.get("clock_s", 0.0)))
    method.resume_from = {"epoch": progress["epoch"], "cursor": progress["cursor"],
                          "device_checkpoint": progress["device_checkpoint"]}
    return progress["epoch"]


def restore_devices_inprocess(setup: Setup, method) -> None:
    """In-process ``--resume``: every device loads the state it saved (under its own RNG)."""
    if not method.device_stateful:
        return
    want = method.resume_from["device_checkpoint"]
    for role in setup.devices:
        with setup.transport.rng.role(role.name):
            got = method.load_device_state(role, want)
        check_device_checkpoint(role.name, got, want)


def check_device_checkpoint(device: str, got: int, want: int | None) -> None:
    """A device must resume from the same checkpoint as the server."""
    if want is not None and got != want:
        raise SfsimError(f"device {device}'s saved state is from checkpoint {got}, the server's from {want}: "
                         "the run was killed between the two writes; start it again")


# -- what a run recorded --------------------------------------------------------------------------------
def recorded_metrics(out: str | Path) -> dict | None:
    """``OUT/metrics.json`` as a dict, or None when absent or unreadable."""
    path = Path(out) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(out: str | Path) -> bool:
    """True when the run in ``out`` ended and wrote its final metrics (nothing is left to resume)."""
    m = recorded_metrics(out)
    return bool(m and m.get("finished"))


def contradictions(recorded: dict, given: dict) -> list[str]:
    """``--option value (recorded: other)`` for each given setting that differs from the recorded run.

    Args:
        recorded: the recorded run's settings (``run_config.json``).
        given: settings given with ``--resume`` (RunConfig field -> value), only those typed by the user.

    Example:
        >>> contradictions({"lr": 0.002, "threads": 1}, {"lr": 0.1, "threads": 4})
        ['--lr 0.1 (recorded: 0.002)']
    """
    out = []
    for key, value in given.items():
        if key in FREE_ON_RESUME or key not in recorded or value is None:
            continue
        if value != recorded[key]:
            out.append(f"--{key.replace('_', '-')} {value} (recorded: {recorded[key]})")
    return out



def checkpoint_totals(out: str | Path) -> dict | None:
    """The totals carried by the run's checkpoints (None: no checkpoint or none recorded).

    With several servers, every server's checkpoint (``OUT/servers/<name>``) adds its own roles' counters;
    ``wall_s`` is the longest. Read before a resumed run overwrites the checkpoints with its own.
    """
    parts = [t for t in ((read_progress(p) or {}).get("totals") for p in cut_files(out)) if t]  # server 0's epoch
    if not parts:
        return None
    merged = {"wall_s": max(float(t.get("wall_s", 0.0)) for t in parts)}
    if any("handovers" in t for t in parts):  # each device's, from the server holding it at the checkpoint
        merged["handovers"] = sorted((h for t in parts for h in t.get("handovers", [])),
                                     key=lambda h: (h["at_s"], h["device"]))
        try:
            merged["clock_s"] = float(json.loads((Path(out) / TRACE_FILE).read_text())["until_s"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for key in _COUNTERS:
        merged[key] = {}
        for t in parts:
            for n, v in t.get(key, {}).items():
                merged[key][n] = merged[key].get(n, 0) + int(v)
    return merged


def agree_across_servers(links, index: int, n_servers: int, out: Path, name: str) -> None:
    """``--resume`` with several servers: every server resumes from the same epoch's checkpoint.

    The servers checkpoint only at the end of an epoch (:func:`trainer.run.runner.train_server`), after its
    closing sync round: no micro-batch is in flight and every server holds the same adapters, so the
    checkpoints of one epoch are one consistent cut of the run, one logical model. Each server writes its
    checkpoint as :data:`NEXT` and waits until every server has written its own; then server 0 renames its own to
    the checkpoint (the run's commit) and, after a second barrier, the others rename theirs. Server 0 commits first
    because a resumed run reads its checkpoint before this agreement: its trace gives every process the run's clock
    and its checkpoint each device the generation to load (``cut_files``); were another server's commit first, a
    run stopped between that commit and server 0's would resume the model of epoch E on epoch E-1's clock and
    device states (or refuse). So a run stopped before server 0's commit resumes from epoch E-1 at every server (a
    written E is left, and overwritten by the next checkpoint), and one stopped after it holds E committed or
    written at every server: those that had not committed commit now. Anything else (a run stopped while the
    servers were writing, or server 0 behind a committed epoch, which only another commit order leaves) is refused
    in one line.
    """
    mine = [(read_progress(Path(out) / f) or {}).get("epoch", -1) for f in (CHECKPOINT, NEXT)]
    # (committed, written) epoch of each server, then a round vector's last two values, 0: it opens no round and its
    # instant is 0 (ServerLinks.all_reduce reads them as those; a server's epoch there stalled the resume)
    held = torch.zeros(2 * n_servers + 2, dtype=torch.float32)
    held[2 * index:2 * index + 2] = torch.tensor([float(e) for e in mine])
    links.all_reduce(held)
    pairs = [(int(held[2 * j]), int(held[2 * j + 1])) for j in range(n_servers)]
    last = max(c for c, _ in pairs)
    if all(c == last for c, _ in pairs):
        return
    if last >= 0 and all(last in pair for pair in pairs) and pairs[0][0] == last:
        if mine[0] != last:
            if (Path(out) / TRACE_NEXT).is_file():
                os.replace(Path(out) / TRACE_NEXT, Path(out) / TRACE_FILE)
            os.replace(Path(out) / NEXT, Path(out) / CHECKPOINT)
        return
    said = ", ".join(f"server {j}: {'none' if c < 0 else f'epoch {c}'}" for j, (c, _) in enumerate(pairs))
    raise SfsimError(f"--resume: the servers' checkpoints are not from the same epoch ({said}); server {name} "
                     "cannot resume consistently: start the run again")


def carried(base: dict | None, meter, elapsed_s: float, reports: dict[str, dict] | None = None) -> dict:
    """The totals to store in a checkpoint: ``base`` (earlier attempts) plus this attempt's so far.

    This attempt's are ``meter``'s and, in a distributed run, each device's last ``reports`` (its own
    FLOPs and uplink bytes, which its server does not see)."""
    base = base or {}
    out = {"wall_s": round(float(base.get("wall_s", 0.0)) + elapsed_s, 3)}
    for key in _COUNTERS:
        mine = {n: int(v) for n, v in getattr(meter, key).items()}
        for n, r in (reports or {}).items():
            if key in r:
                mine[n] = mine.get(n, 0) + int(r[key])
        names = set(mine) | set(base.get(key, {}))
        out[key] = {n: int(base.get(key, {}).get(n, 0)) + int(mine.get(n, 0)) for n in sorted(names)}
    return out


def add_totals(metrics: dict, base: dict | None, distributed: bool) -> dict:
    """``metrics`` of a resumed attempt with the totals before its checkpoint added (see the module)."""
    if not base:
        return metrics
    m = dict(metrics)
    flops = base.get("flops", {})
    for lane in m.get("device_flops", {}):
        m["device_flops"][lane] = int(m["device_flops"][lane]) + int(flops.get(lane, 0))
    m["device_flops_total"] = sum(m.get("device_flops", {}).values())
    for lane in m.get("server_flops", {}):
        m["server_flops"][lane] = int(m["server_flops"][lane]) + int(flops.get(lane, 0))
    m["server_flops_total"] = sum(m.get("server_flops", {}).values())
    for side in ("uplink", "downlink"):
        by = m.get(f"{side}_bytes_by_device", {})
        for dev in by:
            by[dev] = int(by[dev]) + int(base.get(f"{side}_bytes", {}).get(dev, 0))
        m[f"{side}_bytes"] = sum(by.values())
    attempt = float(m.get("wall_s", 0.0))
    m["wall_s"] = round(attempt + float(base.get("wall_s", 0.0)), 3)
    if "handovers" in m and "clock_s" in base:  # this attempt's, on the run's clock, after the earlier attempts'
        m["handovers"] = base.get("handovers", []) + [{**h, "at_s": round(h["at_s"] + base["clock_s"], 9)}
                                                      for h in m["handovers"]]
    m["resumed"] = {"totals_before": base, "attempt_wall_s": attempt,
                    "note": "FLOPs, bytes and wall_s add the totals recorded at the checkpoint to this attempt's"
                    + ("; distributed: the devices' FLOPs and uplink bytes at the checkpoint are those each reported "
                       "to its server when it was taken" if distributed else "")}
    return m


def mark_finished(out: str | Path, metrics: dict) -> dict:
    """Write ``metrics`` as the run's final ``metrics.json``, marked finished (``--resume`` has nothing to do)."""
    m = dict(metrics, finished=True)
    write_atomic(Path(out) / "metrics.json", json.dumps(m, indent=1))
    return m


def trained_nothing(metrics: dict) -> str | None:
    """Why a run trained nothing (no optimizer step, or every device lost), or None."""
    devices = list(metrics.get("samples_by_device", {}))
    lost = metrics.get("lost_devices") or {}
    if devices and all(d in lost for d in devices):
        return f"every device was lost ({', '.join(devices)})"
    if not metrics.get("train_loss_history"):
        return "no training sample reached the server (0 optimizer steps)"
    return None


def check_trained(metrics: dict, out: str | Path) -> None:
    """Raise (exit 1) when the run trained nothing; its outputs stay in ``out`` for a look."""
    why = trained_nothing(metrics)
    if why:
        raise NothingTrained(f"the run trained nothing: {why}; see {out}/metrics.json and {out}/logs")


class NothingTrained(SfsimError):
    """A run that ended without training anything: exit status 1 (it ran, but there is no model)."""

    exit_code = 1


@dataclass
class CheckpointClock:
    """When to checkpoint: every ``every`` optimizer steps (0: off) and at least every ``seconds`` (0: off).

    Example:
        >>> c = CheckpointClock(every=0, seconds=60.0, last_time=0.0)
        >>> c.due(steps=3, now=30.0), c.due(steps=5, now=61.0)
        (False, True)
    """

    every: int = 0
    seconds: float = CHECKPOINT_S
    last_steps: int = 0
    last_time: float = field(default_factory=time.perf_counter)

    def due(self, steps: int, now: float | None = None) -> bool:
        """True (and the clock restarts) when a checkpoint is due after ``steps`` optimizer steps in all."""
        now = time.perf_counter() if now is None else now
        by_steps = self.every > 0 and steps - self.last_steps >= self.every
        by_time = self.seconds > 0 and now - self.last_time >= self.seconds and steps > self.last_steps
        if by_steps or by_time:
            self.last_steps, self.last_time = steps, now
            return True
        return False

    @property
    def active(self) -> bool:
        """True when some cadence is set."""
        return self.every > 0 or self.seconds > 0
