"""Distributed runs: one process per role over ``torch.distributed`` (gloo), and the local launcher.

Rank 0 is the server, rank ``i + 1`` device ``i`` of the scenario. Every process builds the same
model (same seed, so the same initial LoRA and head) and the same partition, then plays one role:

* a device says hello (its sample count), then does what the server's messages ask (the method's
  ``device_handle``) until ``end``, and sends its measurements (FLOPs, bytes, phases, peak memory,
  trace events) as a JSON report;
* the server waits for every hello, runs the same server loop as the in-process run
  (``trainer.run.runner.train_server``: epochs, eval, checkpoints), ends the devices, merges their
  reports into ``metrics.json``, ``trace.json`` and ``gantt.png``.

:func:`launch_local` starts the whole fleet on this machine (``sfsim run --launch local``);
``sfsim run --role ... --rank R --world-size W --master HOST:PORT`` (or ``python -m trainer.run.launch``)
starts one role, by hand or under ``torchrun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch

from sfsim.errors import SfsimError
from sfsim.outputs.trace import TraceEvent
from sfsim.scenario.schema import write_atomic
from trainer.run.measure import cpu_seconds, peak_rss_bytes
from trainer.transport import dynamics, secure
from trainer.transport.distributed import (
    DistTransport,
    LinkShape,
    connect,
    parse_report,
    report_blob,
    sync_clock,
)
from trainer.transport.runtime import Message, PeerLost, role_seed
from trainer.transport.wire import Kind, Limits

ROLES = ("server", "device", "auto")
RENDEZVOUS_MIN_S = 10.0  # start-up: roles load the model at different speeds, so at least this long to join
#: The messages each method's devices send up (a server refuses any other kind: no 2 GiB adapter to
#: a SplitFrozen server that never reads one).
_BASE_UP = {Kind.HELLO, Kind.DONE, Kind.HEARTBEAT, Kind.REPORT, Kind.LEAVE}
UP_KINDS = {"splitfrozen": frozenset(_BASE_UP | {Kind.ACT}), "splitfrozen-sequential": frozenset(_BASE_UP | {Kind.ACT}),
            "splitlora": frozenset(_BASE_UP | {Kind.ACT, Kind.ADAPTER}), "fedlora": frozenset(_BASE_UP | {Kind.ADAPTER}),
            "cenlora": frozenset(_BASE_UP | {Kind.SHARD})}


def from_env(role: str, rank: int | None, world: int | None, master: str | None) -> tuple[str, int, int, str | None]:
    """Fill rank, world size and master from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    ``role="auto"``: the server on rank 0, a device elsewhere (what one torchrun command line needs).
    ``master`` stays ``None`` under torchrun: the process group then joins through ``env://``.
    """
    env = os.environ
    if rank is None and "RANK" in env:
        rank = int(env["RANK"])
    if world is None and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
    missing = [k for k, v in {"--rank": rank, "--world-size": world}.items() if v is None]
    if master is None and "MASTER_ADDR" not in env:
        missing.append("--master")
    if missing:
        raise SfsimError(f"--role needs {', '.join(missing)} (e.g. --rank 0 --world-size 5 --master 10.0.0.2:29500), "
                         "or run it under torchrun")
    if role == "auto":
        role = "server" if rank == 0 else "device"
    return role, rank, world, master


def run_role(cfg, role: str, rank: int, world: int, master: str | None, resume: bool = False) -> int:
    """Play one role of a distributed run; return the process's exit status (0: done)."""
    from trainer.run.runner import build, prepare_out

    if role not in ROLES[:2]:
        raise SfsimError(f"--role {role!r}: use server, device or auto")
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
    dynamics.check(scenario, cfg.method, cfg.emulate, f"{cfg.devices}: --emulate {cfg.emulate}")
    channels = connect(rank, world, master, names, secure.need_secret(), secure.encrypt_default(multi_host=True),
                       rendezvous_s=max(cfg.peer_timeout, RENDEZVOUS_MIN_S), timeout_s=max(600.0, 4 * cfg.peer_timeout))
    offset = sync_clock(meter)  # from here on meter.now() is the run's shared clock (trainer.transport.dynamics)
    presence = None
    if role == "device" and cfg.emulate != "none":
        presence = dynamics.presence(scenario, names[rank - 1], meter.now)
        if presence is not None:
            meter.presence[names[rank - 1]] = presence
    tr = DistTransport(rank, names, channels, meter, _limits(cfg, built, role == "server"), _shaping(cfg, scenario),
                       peer_timeout=cfg.peer_timeout, presence=presence)
    setup.transport = tr
    if role == "device":
        return _device(cfg, built, tr, names[rank - 1], offset, resume)
    return _server(cfg, built, tr, out, t0, resume)


def _limits(cfg, built, server: bool) -> Limits:
    """What this run's peers may send: the model's shapes (activations, the flat adapter state), the task's
    classes and vocabulary, each device's share of the samples, and the kinds the method's devices send."""
    _, lm, setup, method, _, _ = built
    head = setup.head
    keys, like = getattr(method, "keys", None), getattr(method, "like", None)  # methods that exchange adapters
    numel = sum(like[k].numel() for k in keys) if keys is not None and like is not None else -1
    return Limits(hidden=lm.hidden, max_batch=setup.micro_batch, max_len=cfg.max_len, lm=setup.is_lm, state_numel=numel,
                  num_classes=0 if head is None else head.classifier.out_features,
                  vocab=lm.model.get_input_embeddings().num_embeddings,
                  budget=tuple(d.n_samples for d in setup.devices), kinds=UP_KINDS.get(cfg.method) if server else None)


def _shaping(cfg, scenario) -> dict[str, tuple[LinkShape, LinkShape]] | None:
    """Each device's (uplink, downlink) as shaped under ``--emulate links|all`` (rates from ``trainer.transport.dynamics``)."""
    if cfg.emulate not in ("links", "all"):
        return None
    out = {}
    for d in scenario.devices:
        up, down = dynamics.link_rates(scenario, d)
        out[d.name] = (LinkShape(d.uplink.bandwidth, d.uplink.latency, up),
                       LinkShape(d.downlink.bandwidth, d.downlink.latency, down))
    return out


def _device(cfg, built, tr: DistTransport, name: str, offset: float, resume: bool) -> int:
    _, _, setup, method, _, _ = built
    role = next(d for d in setup.devices if d.name == name)
    torch.manual_seed(role_seed(cfg.seed, name))  # this device's RNG, as the in-process run gives it
    ckpt = method.load_device_state(role) if resume else -1
    tr.send_up(Message(name, ckpt, kind="hello", aux=role.n_samples))
    try:
        while True:
            msg = tr.recv_down(name)
            if msg.kind == "end":
                break
            method.handle(role, msg)
    except PeerLost as err:
        print(f"error: device {name}: lost the server ({err.reason}); stopping", file=sys.stderr, flush=True)
        return 3
    m = setup.meter
    report = {"device": name, "flops": int(m.flops.get(name, 0)), "uplink_bytes": int(m.uplink_bytes.get(name, 0)),
              "phase_s": dict(m.phase_s), "peak_rss_bytes": peak_rss_bytes(), "cpu_s": cpu_seconds() - m.cpu0, "clock_offset_s": offset,
              "stretched_s": m.stretched_s, "header_bytes": tr.header_bytes,
              "events": [list(e) for e in m.events]}
    tr.send_up(Message(name, -1, {"blob": report_blob(report)}, kind="report"))
    tr.close()
    return 0


def _server(cfg, built, tr: DistTransport, out: Path, t0: float, resume: bool) -> int:
    from trainer.run.runner import _write_trace, check_device_checkpoint, train_server

    _, _, setup, method, _, _ = built
    names = [d.name for d in setup.devices]
    samples, ckpts = {}, {}
    for n in names:
        try:
            msg = tr.recv_up(n, {"hello"})
            samples[n], ckpts[n] = msg.aux, msg.mb
        except PeerLost as err:
            method.lose(n, f"never joined: {err.reason}")
    setup.samples = samples
    torch.manual_seed(role_seed(cfg.seed, "server"))
    metrics = train_server(cfg, built, out, t0, resume,
                           check=lambda want: [check_device_checkpoint(n, c, want) for n, c in ckpts.items()])
    for n in names:
        tr.send_down(Message(n, -1, kind="end"))
    reports = {}
    for n in method.live():
        try:
            msg = tr.recv_up(n, {"report"})
            reports[n] = parse_report(msg.tensors["blob"], n)
        except (PeerLost, ValueError) as err:
            print(f"warning: no report from {n} ({err}); its measurements are missing", file=sys.stderr)
            if isinstance(err, ValueError):
                tr.dropped[n] = f"bad report: {err}"
    metrics = merge_reports(metrics, reports, setup, tr)
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    metrics["dropped_peers"] = dict(tr.dropped)
    metrics["encrypted"] = any(ch.encrypted for ch in tr.channels.values())
    write_atomic(out / "metrics.json", json.dumps(finite(metrics), indent=1, allow_nan=False))
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
    m["cpu_s_by_role"] = {setup.server: round(cpu_seconds() - setup.meter.cpu0, 3),
                          **{n: round(float(r.get("cpu_s", 0.0)), 3) for n, r in reports.items()}}
    m["cpu_s"] = round(sum(m["cpu_s_by_role"].values()), 3)
    m["peak_memory_note"] = "peak RSS (ru_maxrss) of each role's own process"
    m["header_bytes"] = tr.header_bytes + sum(int(r["header_bytes"]) for r in reports.values())
    m["clock_offset_s"] = {n: r["clock_offset_s"] for n, r in reports.items()}
    m["emulated_sleep_s"] = {n: round(r["stretched_s"], 6) for n, r in reports.items()}
    m["missing_reports"] = [n for n in names if n not in reports]
    m["notes"] = dict(m["notes"], link_events="distributed: shaped links: a send occupies the link for bytes / "
                      "bandwidth (the latency follows as a delay, as in the simulator); unshaped: from the queue "
                      "to gloo handing it to the peer")
    return m


def finite(obj):
    """``obj`` with every NaN or infinity replaced by ``None`` (JSON has no NaN: ``null`` says "no value")."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


# -- the local launcher ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CTX = None


def _context():
    """A forkserver that imported torch, transformers and peft once: roles start in well under a second.

    Spawning a fresh interpreter per role costs about 8 s of imports each (2 cores, 4 roles: 16 s);
    forking this parent instead is unsafe once it has run torch (OpenMP pools do not survive fork).
    The forkserver is a clean process that only imported, so forking it is safe, and it lives for
    the whole session (later runs start at once).
    """
    global _CTX
    if _CTX is None:
        import multiprocessing as mp

        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the forkserver's pool size; roles set their own
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "transformers", "peft", "trainer.run.runner", "trainer.run.launch"])
    return _CTX


def die_with(launcher: int) -> None:
    """End this process (SIGKILL) as soon as process ``launcher`` ends, however it ends.

    A role's parent is the launcher's forkserver, which outlives the launcher while any role holds its
    liveness pipe, so a parent-death signal alone would not fire: a daemon thread waits on a pidfd of
    the launcher (polls, where there is none) and kills this process when it goes.
    ``PR_SET_PDEATHSIG`` is armed too, for a forkserver that ends first.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    import select
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(launcher)
            select.select([fd], [], [])  # readable once the launcher has ended
        except (AttributeError, OSError):  # no pidfd here (or the launcher is already gone): poll
            while _running(launcher):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="die-with-launcher").start()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _beat(path: Path, every_s: float = 1.0) -> None:
    """Touch ``path`` every ``every_s`` from a daemon thread (the launcher's sign that the server is not hung)."""
    import threading

    def loop() -> None:
        while True:
            path.touch()
            time.sleep(every_s)

    threading.Thread(target=loop, daemon=True, name="heartbeat").start()


def _role_process(cfg_json: str, role: str, rank: int, world: int, master: str, resume: bool, log: str,
                  secret_file: str = "", encrypt: str = "auto", launcher: int = 0) -> None:
    """Entry of a forked role: output to ``log``, one role, then leave at once (or with the launcher)."""
    if launcher:
        die_with(launcher)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.setsid()  # its own process group: the launcher can stop it and anything it started
    os.environ[secure.SECRET_FILE_ENV], os.environ[secure.ENCRYPT_ENV] = secret_file, encrypt
    if role == "server":
        _beat(Path(log).with_suffix(".alive"))
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # tqdm's default lock is a multiprocessing semaphore that os._exit would leak
    exit_now(role_main(["--config-json", cfg_json, "--role", role, "--rank", str(rank), "--world-size", str(world),
                        "--master", master] + (["--resume"] if resume else [])))


def _target_process(fn, secret_file: str, launcher: int, master: str, world: int, rank: int, log: str) -> None:
    """Entry of a fault-injection role: the run's secret in its environment, as a real role has it."""
    die_with(launcher)
    os.environ[secure.SECRET_FILE_ENV] = secret_file
    os.environ.pop(secure.ENCRYPT_ENV, None)  # a device follows the server's choice
    fn(master, world, rank, log)


def launch_local(cfg, resume: bool = False, grace_s: float = 10.0, targets: dict | None = None) -> dict:
    """Start the server and one process per device on this machine; wait; return the metrics.

    The server's output is passed through (its ``error:`` line becomes this call's error); every
    role logs to ``OUT/logs/<role>.log`` and their pids are in ``OUT/logs/pids.json``. When the server
    ends, devices get ``grace_s`` seconds to exit and are then killed, so no process outlives the run;
    a server whose heartbeat stops for ``max(2 x --peer-timeout, 10 s)`` is killed as hung. Every role
    dies with the launcher. The run's secret is fresh, in a 0600 file in a private folder, removed at
    the end. ``targets`` (fault injection in tests): rank -> a function run instead of that role, called
    with ``(master, world, rank, log)`` and ``SFSIM_SECRET_FILE`` set.
    """
    import shutil
    import tempfile

    from sfsim.scenario.config import load_scenario
    from trainer.run.runner import prepare_out

    names = [d.name for d in load_scenario(cfg.devices).devices]
    out = prepare_out(cfg, resume)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    cfg_json = json.dumps(dataclasses.asdict(cfg))
    world, master = len(names) + 1, f"127.0.0.1:{_free_port()}"
    ctx = _context()
    roles = [("server", 0, "server")] + [("device", i, n) for i, n in enumerate(names, start=1)]
    procs, private = [], Path(tempfile.mkdtemp(prefix="sfsim-run-"))  # mode 0700
    secret_file = str(secure.new_secret_file(private))
    # one machine, loopback: plaintext unless SFSIM_ENCRYPT=on (roles fork from a forkserver with its own
    # environment, so the choice travels with them; a role started any other way counts as multi-host)
    encrypt = "off" if secure.encrypt_default(multi_host=False) is False else "on"
    (logs / "server.alive").unlink(missing_ok=True)
    try:
        for role, rank, name in roles:
            log = str(logs / f"{name}.log")
            if targets and rank in targets:
                p = ctx.Process(target=_target_process, args=(targets[rank], secret_file, os.getpid(), master, world, rank, log),
                                daemon=False)
            else:
                p = ctx.Process(target=_role_process, args=(cfg_json, role, rank, world, master, resume, log,
                                                            secret_file, encrypt, os.getpid()), daemon=False)
            p.start()
            procs.append(p)
        write_atomic(logs / "pids.json", json.dumps({name: p.pid for (_, _, name), p in zip(roles, procs, strict=True)}))
        last_error = _follow(procs[0], logs / "server.log", hang_s=max(2 * cfg.peer_timeout, 10.0))
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(p.is_alive() for p in procs[1:]):
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.is_alive():
                _kill(p)
        shutil.rmtree(private, ignore_errors=True)
    code = procs[0].exitcode
    if code != 0:
        if last_error:
            raise SfsimError(last_error.removeprefix("error: "))
        raise SfsimError(f"the server process exited with status {code}; logs in {logs}")
    return json.loads((out / "metrics.json").read_text())


def _follow(proc, log: Path, hang_s: float = math.inf) -> str | None:
    """Copy the server's log to our stderr as it grows, except ``error:`` lines; return the last of those.

    A server whose heartbeat file (``server.alive``, touched every second) is older than ``hang_s`` is
    killed: its error names the hang.
    """
    last, pos, buf = None, 0, b""
    beat, started = log.with_suffix(".alive"), time.time()
    while True:
        alive = proc.is_alive()
        seen = beat.stat().st_mtime if beat.exists() else started
        if alive and time.time() - seen > hang_s:
            _kill(proc)
            return f"error: the server did not respond for {hang_s:g} s (hung); it was stopped. Logs in {log.parent}"
        if log.is_file():
            with open(log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
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
        if not alive:
            proc.join()
            tail = buf.decode(errors="replace")
            if tail.startswith("error: "):
                last = tail.strip()
            return last
        time.sleep(0.1)


def _kill(p) -> None:
    """SIGTERM the role's process group, then SIGKILL; reap it (no zombies)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            p.kill()
        p.join(wait)
        if not p.is_alive():
            return


def role_main(argv: list[str] | None = None) -> int:
    """``python -m trainer.run.launch``: one role of a distributed run from a saved run configuration."""
    ap = argparse.ArgumentParser(prog="python -m trainer.run.launch")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="run_config.json-style file")
    src.add_argument("--config-json", help="the same, inline")
    ap.add_argument("--role", required=True, choices=ROLES)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--master", required=True)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from trainer.run.runner import RunConfig

    hf_logging.disable_progress_bar()
    try:
        cfg = RunConfig(**json.loads(a.config_json if a.config_json else Path(a.config).read_text()))
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
