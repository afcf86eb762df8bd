"""Distributed runs: one process per role over ``torch.distributed`` (gloo), and the local launcher.

Rank 0 is the server, rank ``i + 1`` device ``i`` of the scenario. Every process builds the same
model (same seed, so the same initial LoRA and head) and the same partition, then plays one role:

* a device says hello (its sample count), then does what the server's messages ask (the method's
  ``device_handle``) until ``end``, and sends its measurements (FLOPs, bytes, phases, peak memory,
  trace events) as a JSON report;
* the server waits for every hello, runs the same server loop as the in-process run
  (``trainer.runner.train_server``: epochs, eval, checkpoints), ends the devices, merges their
  reports into ``metrics.json``, ``trace.json`` and ``gantt.png``.

:func:`launch_local` starts the whole fleet on this machine (``sfsim run --launch local``);
``sfsim run --role ... --rank R --world-size W --master HOST:PORT`` (or ``python -m trainer.launch``)
starts one role, by hand or under ``torchrun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from sfsim.errors import SfsimError
from sfsim.schema import write_atomic
from sfsim.trace import TraceEvent
from trainer.distributed import DistTransport, LinkShape, init, parse_report, report_blob, sync_clock
from trainer.measure import peak_rss_bytes
from trainer.runtime import Message, PeerLost, role_seed
from trainer.wire import Limits

ROLES = ("server", "device")


def run_role(cfg, role: str, rank: int, world: int, master: str, resume: bool = False) -> int:
    """Play one role of a distributed run; return the process's exit status (0: done)."""
    from trainer.runner import build, prepare_out

    if role not in ROLES:
        raise SfsimError(f"--role {role!r}: use server or device")
    if (role == "server") != (rank == 0):
        raise SfsimError(f"--role {role} with --rank {rank}: the server is rank 0, devices are ranks 1..N")
    t0 = time.perf_counter()
    out = prepare_out(cfg, resume) if role == "server" else Path(cfg.out)
    built = build(cfg)
    scenario, lm, setup, method, dev, info = built
    names = [d.name for d in setup.devices]
    if world != len(names) + 1:
        raise SfsimError(f"--world-size {world}: {cfg.devices} has {len(names)} devices, so the world is "
                         f"{len(names) + 1} (1 server + {len(names)} devices)")
    if not 0 <= rank < world:
        raise SfsimError(f"--rank {rank} is outside 0..{world - 1}")
    meter = setup.meter
    if role == "device" and cfg.emulate in ("compute", "all"):
        d = scenario.devices[rank - 1]
        if d.flops is None:
            raise SfsimError(f"{cfg.devices}: device {d.name} has a latency profile; --emulate compute needs a "
                             "'flops' rate for every device")
        meter.stretch[d.name] = d.flops
    init(rank, world, master, timeout_s=max(600.0, 4 * cfg.peer_timeout))
    offset = sync_clock(meter)
    shaping = None
    if cfg.emulate in ("links", "all"):
        shaping = {d.name: (LinkShape(d.uplink.bandwidth, d.uplink.latency),
                            LinkShape(d.downlink.bandwidth, d.downlink.latency)) for d in scenario.devices}
    limits = Limits(hidden=lm.hidden, max_batch=setup.micro_batch, max_len=cfg.max_len, lm=setup.is_lm)
    tr = DistTransport(rank, names, meter, limits, shaping, peer_timeout=cfg.peer_timeout)
    setup.transport = tr
    if role == "device":
        return _device(cfg, built, tr, names[rank - 1], offset)
    return _server(cfg, built, tr, out, t0, resume)


def _device(cfg, built, tr: DistTransport, name: str, offset: float) -> int:
    _, _, setup, method, _, _ = built
    role = next(d for d in setup.devices if d.name == name)
    torch.manual_seed(role_seed(cfg.seed, name))  # this device's RNG, as the in-process run gives it
    tr.send_up(Message(name, -1, kind="hello", aux=role.n_samples))
    try:
        while True:
            msg = tr.recv_down(name)
            if msg.kind == "end":
                break
            method.device_handle(role, msg)
    except PeerLost as err:
        print(f"error: device {name}: lost the server ({err.reason}); stopping", file=sys.stderr, flush=True)
        return 3
    m = setup.meter
    report = {"device": name, "flops": int(m.flops.get(name, 0)), "uplink_bytes": int(m.uplink_bytes.get(name, 0)),
              "phase_s": dict(m.phase_s), "peak_rss_bytes": peak_rss_bytes(), "clock_offset_s": offset,
              "stretched_s": m.stretched_s, "header_bytes": tr.header_bytes,
              "events": [list(e) for e in m.events]}
    tr.send_up(Message(name, -1, {"blob": report_blob(report)}, kind="report"))
    tr.close()
    return 0


def _server(cfg, built, tr: DistTransport, out: Path, t0: float, resume: bool) -> int:
    from trainer.runner import _write_trace, train_server

    _, _, setup, method, _, _ = built
    names = [d.name for d in setup.devices]
    samples = {}
    for n in names:
        try:
            samples[n] = tr.recv_up(n, {"hello"}).aux
        except PeerLost as err:
            method.lose(n, f"never joined: {err.reason}")
    setup.samples = samples
    torch.manual_seed(role_seed(cfg.seed, "server"))
    metrics = train_server(cfg, built, out, t0, resume)
    for n in names:
        tr.send_down(Message(n, -1, kind="end"))
    reports = {}
    for n in method.live():
        try:
            msg = tr.recv_up(n, {"report"})
            reports[n] = parse_report(msg.tensors["blob"])
        except (PeerLost, ValueError) as err:
            print(f"warning: no report from {n} ({err}); its measurements are missing", file=sys.stderr)
    metrics = merge_reports(metrics, reports, setup, tr)
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    events = list(setup.meter.events)
    for r in reports.values():
        events += [TraceEvent(*e) for e in r["events"]]
    _write_trace(out, sorted(events, key=lambda e: e.start), metrics)
    tr.close()
    return 0


def merge_reports(metrics: dict, reports: dict[str, dict], setup, tr: DistTransport) -> dict:
    """Fold the devices' own measurements into the server's metrics (same field shapes as in-process)."""
    m = dict(metrics)
    names = [d.name for d in setup.devices]
    m["device_flops"] = {n: int(reports.get(n, {}).get("flops", 0)) for n in names}
    m["device_flops_total"] = sum(m["device_flops"].values())
    m["uplink_bytes_by_device"] = {n: int(reports.get(n, {}).get("uplink_bytes", 0)) for n in names}
    m["uplink_bytes"] = sum(m["uplink_bytes_by_device"].values())
    phases = dict(m["phase_s"])
    for r in reports.values():
        for k, v in r["phase_s"].items():
            phases[k] = round(phases.get(k, 0.0) + v, 6)
    m["phase_s"] = dict(sorted(phases.items()))
    m["peak_rss_bytes_by_role"] = {setup.server: peak_rss_bytes(),
                                   **{n: int(r["peak_rss_bytes"]) for n, r in reports.items()}}
    m["peak_rss_bytes"] = max(m["peak_rss_bytes_by_role"].values())
    m["peak_memory_note"] = "peak RSS (ru_maxrss) of each role's own process"
    m["header_bytes"] = tr.header_bytes + sum(int(r["header_bytes"]) for r in reports.values())
    m["clock_offset_s"] = {n: r["clock_offset_s"] for n, r in reports.items()}
    m["emulated_sleep_s"] = {n: round(r["stretched_s"], 6) for n, r in reports.items()}
    m["missing_reports"] = [n for n in names if n not in reports]
    m["notes"] = dict(m["notes"], link_events="distributed: a send lasts from the start of its serialisation "
                      "(shaped: bytes / bandwidth, then latency) until gloo handed it to the peer")
    return m


# -- the local launcher ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(threads: int) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def launch_local(cfg, resume: bool = False, grace_s: float = 10.0) -> dict:
    """Start the server and one process per device on this machine; wait; return the metrics.

    The server's output is passed through (its ``error:`` line becomes this call's error); device
    logs go to ``OUT/logs/<device>.log``. When the server ends, devices get ``grace_s`` seconds to
    exit and are then killed, so no process outlives the run.
    """
    from sfsim.scenario import load_scenario
    from trainer.runner import prepare_out

    names = [d.name for d in load_scenario(cfg.devices).devices]
    out = prepare_out(cfg, resume)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    cfg_path = logs / "launch_config.json"
    write_atomic(cfg_path, json.dumps(dataclasses.asdict(cfg), indent=1))
    world, master = len(names) + 1, f"127.0.0.1:{_free_port()}"
    base = [sys.executable, "-m", "trainer.launch", "--config", str(cfg_path), "--world-size", str(world),
            "--master", master] + (["--resume"] if resume else [])
    env = _env(cfg.threads)
    procs, files = [], []
    try:
        server = subprocess.Popen(base + ["--role", "server", "--rank", "0"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(server)
        for i, n in enumerate(names, start=1):
            f = open(logs / f"{n}.log", "wb")  # noqa: SIM115 (closed in finally)
            files.append(f)
            procs.append(subprocess.Popen(base + ["--role", "device", "--rank", str(i)], env=env, stdout=f,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        last_error = _forward(server)
        server.wait()
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(p.poll() is None for p in procs[1:]):
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
        for f in files:
            f.close()
    if server.returncode != 0:
        if last_error:
            raise SfsimError(last_error.removeprefix("error: "))
        raise SfsimError(f"the server process exited with status {server.returncode}; logs in {logs}")
    return json.loads((out / "metrics.json").read_text())


def _forward(proc: subprocess.Popen) -> str | None:
    """Copy the process's output to ours as it comes, except ``error:`` lines; return the last of those."""
    last = None
    buf = b""
    while True:
        chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            if line.startswith("error: "):
                last = line
            else:
                sys.stderr.write(line + "\n")
        if b"\r" in buf:  # a progress bar redraws its line: pass it on now
            cut = buf.rindex(b"\r") + 1
            sys.stderr.write(buf[:cut].decode(errors="replace"))
            buf = buf[cut:]
        sys.stderr.flush()
    return last


def _kill(p: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL; reap it (no zombies)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    p.wait(5)


def role_main(argv: list[str] | None = None) -> int:
    """``python -m trainer.launch``: one role of a distributed run from a saved run configuration."""
    ap = argparse.ArgumentParser(prog="python -m trainer.launch")
    ap.add_argument("--config", required=True)
    ap.add_argument("--role", required=True, choices=ROLES)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--master", required=True)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    from trainer.runner import RunConfig

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        cfg = RunConfig(**json.loads(Path(a.config).read_text()))
        torch.set_num_threads(cfg.threads)
        return run_role(cfg, a.role, a.rank, a.world_size, a.master, resume=a.resume)
    except SfsimError as err:
        print(f"error: {err}", flush=True)
        return 2


def exit_now(code: int) -> None:
    """Leave at once: gloo threads may still block on dead peers, and nothing is left to write."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(role_main())


__all__ = ["run_role", "launch_local", "merge_reports", "role_main"]
