"""Distributed runs: one process per role over admitted TCP channels, and the local launcher.

Ranks ``0..S-1`` are the scenario's S servers, rank ``S + i`` device ``i``; each device talks to the
server the run's split assigns it (``trainer.run.resolve``: plan, pin or the simulator's least-loaded
rule) and to each handover target. Every process proves it holds the run's secret before it gets a
rank and talks over one admitted channel per device-server pair (:mod:`trainer.transport.rendezvous`);
the servers' backhaul sync runs over their own channels (:mod:`trainer.transport.backhaul`). Every
process builds the same model (same seed, so the same initial LoRA and head) and the same partition,
then plays one role:

* a device says hello (its sample count) to its server, then does what the servers' messages ask (the
  method's ``device_handle``) until ``end``, and sends its measurements (FLOPs, bytes, phases, peak
  memory, trace events, handovers) as a JSON report;
* a server waits for its devices' hellos, runs the same server loop as the in-process run
  (``trainer.run.runner.train_server``: epochs, eval, checkpoints) on them, with several servers inside
  the backhaul sync (``trainer.transport.backhaul``), ends its devices and merges their reports. Server 0
  gathers every server's metrics and events and writes the run's ``metrics.json``, ``trace.json`` and
  ``gantt.png``; the others keep their own (eval, adapter, metrics) in ``OUT/servers/<name>``.

:func:`run` is the front door (``sfsim run``): it calls :func:`launch_local` or the in-process run.

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
from sfsim.scenario.config import load_scenario
from sfsim.scenario.schema import write_atomic
from trainer.run import runner
from trainer.run.estimate import record_start, say
from trainer.run.fleet import Fleet, device_legs, fleet, root_error, shaping
from trainer.run.measure import cpu_seconds, peak_rss_bytes
from trainer.run.merge import finite, merge_reports, merge_servers
from trainer.run.resume import (
    Resumed,
    add_totals,
    agree_across_servers,
    checkpoint_totals,
    is_finished,
    mark_finished,
    recorded_metrics,
    start_point,
    varies,
    whole_trace,
)
from trainer.run.runner import RunConfig
from trainer.transport import dynamics, secure
from trainer.transport.backhaul import ServerLinks, ServerSync
from trainer.transport.departure import drop_instants
from trainer.transport.distributed import DistTransport, connect, parse_report, report_blob, sync_clock
from trainer.transport.rendezvous import credential_file, server_ports
from trainer.transport.runtime import Message, PeerLost, role_seed
from trainer.transport.wire import Kind, Limits

ROLES = ("server", "device", "auto")
RENDEZVOUS_MIN_S = 10.0  # start-up: roles load the model at different speeds, so at least this long to join
#: The messages each method's devices send up (a server refuses any other kind, e.g. a SplitFrozen adapter).
_BASE_UP = {Kind.HELLO, Kind.DONE, Kind.HEARTBEAT, Kind.REPORT, Kind.LEAVE}
_MOVING = {Kind.MOVED, Kind.JOIN}  # devices that hand over (trainer.transport.handover)
_FROZEN_UP = frozenset(_BASE_UP | _MOVING | {Kind.ACT, Kind.GONE})  # gone: the cache (transport.departure)
UP_KINDS = {"splitfrozen": _FROZEN_UP, "splitfrozen-sequential": _FROZEN_UP,
            "splitlora": frozenset(_BASE_UP | _MOVING | {Kind.ACT, Kind.ADAPTER}),
            "fedlora": frozenset(_BASE_UP | _MOVING | {Kind.ADAPTER}),
            "cenlora": frozenset(_BASE_UP | {Kind.SHARD})}


def from_env(role: str, rank: int | None, world: int | None, master: str | None) -> tuple[str, int, int, str | None]:
    """Fill rank, world size and master from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    ``role="auto"`` stays: :func:`run_role` makes ranks ``0..S-1`` the scenario's S servers and the rest devices
    (what one torchrun command line needs). ``master`` stays ``None`` under torchrun: the process group then
    joins through ``env://``.
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
    return role, rank, world, master


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Train with ``cfg.method`` as ``cfg.launch`` says; write every output; return the metrics (``sfsim run``).

    ``local``: one process per server and per device on this machine (:func:`launch_local`);
    ``inprocess``: every role in this process (:func:`trainer.run.runner.run`), which has one server, so a
    scenario whose devices are assigned to several servers is refused there rather than silently run on one.
    """
    if resume and is_finished(cfg.out):  # nothing to do, and nothing is touched
        print(f"note: the run in {cfg.out} finished; nothing to resume", file=sys.stderr)
        return recorded_metrics(cfg.out)
    base = checkpoint_totals(cfg.out) if resume else None  # read before this attempt overwrites the checkpoint
    if cfg.launch == "local":
        n = runner.device_count(cfg)
        if cfg.progress:
            say(f"starting the servers and {n} device processes; each loads the model and data")
        runner.prepare_out(cfg, resume)
        record_start(cfg.out)  # the server's estimate counts the processes' start-up from here
        metrics = launch_local(cfg, resume=resume)
    else:
        metrics = runner.run(cfg, resume=resume)
    return mark_finished(cfg.out, add_totals(metrics, base, distributed=cfg.launch != "inprocess"))


def _check_rank(cfg, fl: Fleet, role: str, rank: int, world: int) -> None:
    """``--world-size``, ``--rank`` and ``--role`` against the scenario's fleet, each a one-line error."""
    n_srv = len(fl.servers)
    if world != fl.world:
        raise SfsimError(f"--world-size {world}: {cfg.devices} has {n_srv} server(s) and {len(fl.devices)} devices, "
                         f"so the world is {fl.world} (servers on ranks 0..{n_srv - 1}, then the devices)")
    if not 0 <= rank < world:
        raise SfsimError(f"--rank {rank} is outside 0..{world - 1}")
    if (role == "server") != (rank < n_srv):
        raise SfsimError(f"--role {role} with --rank {rank}: the servers are ranks 0..{n_srv - 1}, devices "
                         f"{n_srv}..{world - 1}")


def run_role(cfg, role: str, rank: int, world: int, master: str | None, resume: bool = False) -> int:
    """Play one role of a distributed run; return the process's exit status (0: done)."""
    if role not in ROLES:
        raise SfsimError(f"--role {role!r}: use server, device or auto")
    t0 = time.perf_counter()
    if role == "device":  # a device process trains no server part: nothing of it goes to the server's GPU
        cfg = dataclasses.replace(cfg, server_device="cpu", precision="fp32")
    servers = [s.name for s in load_scenario(cfg.devices).servers]
    built = runner.build(cfg, server=servers[rank] if role != "device" and 0 <= rank < len(servers) else None)
    scenario, setup, fl = built.scenario, built.setup, fleet(built)
    n_srv = len(fl.servers)
    role = role if role != "auto" else "server" if rank < n_srv else "device"
    _check_rank(cfg, fl, role, rank, world)
    out = _out(cfg, fl, rank, resume) if role == "server" else Path(cfg.out)
    meter = setup.meter
    if role == "device" and cfg.emulate in ("compute", "all"):
        d = scenario.devices[rank - n_srv]
        if d.flops is None:
            raise SfsimError(f"{cfg.devices}: device {d.name} has a latency profile; --emulate compute needs a "
                             "'flops' rate for every device")
        meter.stretch[d.name] = d.flops
    dynamics.check(scenario, cfg.method, cfg.emulate, f"{cfg.devices}: --emulate {cfg.emulate}", cfg.server_order,
                   cfg.client_order)
    at = Resumed(device_legs(cfg, built, fl), fl.devices)  # from where server 0 says the run starts (its resume)
    start = start_point(cfg.out, at.full, fl.devices, varies(scenario, at.full)) if resume and rank == 0 else None
    limits = _limits(cfg, built, role == "server")  # before a server keeps only its own devices
    timeout_s = max(600.0, 4 * cfg.peer_timeout)
    channels = connect(rank, world, master, fl.devices, secure.need_secret(), secure.encrypt_default(multi_host=True),
                       rendezvous_s=max(cfg.peer_timeout, RENDEZVOUS_MIN_S), timeout_s=timeout_s, servers=fl.servers,
                       visits=at, ports=server_ports(cfg.server_ports, fl.servers, master), start=start)
    legs, clock = at.legs, at.start.clock_s  # clock: the run's at this attempt's 0
    built.info["clock_s"] = clock
    fl.home.update({n: lg[0][1] for n, lg in legs.items() if lg})
    visits = {n: sorted({r for _, r, *_ in lg}) for n, lg in legs.items()}
    links = None  # a server's backhaul: its channels to the other servers (trainer.transport.backhaul)
    if role == "server" and n_srv > 1:
        links = ServerLinks(rank, n_srv, {p: ch for p, ch in channels.items() if p < n_srv}, timeout_s)
        channels = {p: ch for p, ch in channels.items() if p >= n_srv}
    offset = sync_clock(meter)  # from here on meter.now() is the run's shared clock (trainer.transport.dynamics)
    presence = None
    if role == "device" and cfg.emulate != "none" and dynamics.emulates_availability(cfg.method):
        presence = dynamics.presence(scenario, fl.devices[rank - n_srv], meter.now, clock)
        if presence is not None:
            meter.presence[fl.devices[rank - n_srv]] = presence
    tr = DistTransport(rank, fl.devices, channels, meter, limits, shaping(cfg, legs), peer_timeout=cfg.peer_timeout,
                       presence=presence, servers=n_srv, home=fl.home, visits=visits,
                       window=setup.buffer if cfg.method == "splitfrozen" else 1)
    if any(len(lg) > 1 for lg in legs.values()):  # handovers (trainer.transport.handover; dynamics.check)
        built.method.legs = {n: [(at, r, fl.servers[r]) for at, r, *_ in lg] for n, lg in legs.items()}
        if role == "server":
            built.method.visitors = {d.name: d for d in setup.devices if any(r == rank for _, r, *_ in legs[d.name])}
    setup.transport = tr
    if role == "device":
        return _device(cfg, built, tr, fl.devices[rank - n_srv], offset, resume)
    _own_devices(built, fl, rank)
    if links is not None:
        built.method.sync = _server_sync(cfg, built, fl, rank, links)
        if resume:
            agree_across_servers(links, rank, n_srv, out, fl.servers[rank])
    return _server(cfg, built, tr, out, t0, resume, fl, links)


def _limits(cfg, built: runner.Built, server: bool) -> Limits:
    """What this run's peers may send: the model's shapes (activations, the flat adapter state), the task's
    classes and vocabulary, each device's share of the samples, the kinds the method's devices send, the epochs."""
    lm, setup, method = built.lm, built.setup, built.method
    head = setup.head
    keys, like = getattr(method, "keys", None), getattr(method, "like", None)  # methods that exchange adapters
    numel = sum(like[k].numel() for k in keys) if keys is not None and like is not None else -1
    return Limits(hidden=lm.hidden, max_batch=setup.micro_batch, max_len=cfg.max_len, lm=setup.is_lm, state_numel=numel,
                  num_classes=0 if head is None else head.classifier.out_features,
                  vocab=lm.model.get_input_embeddings().num_embeddings,
                  budget=tuple(d.n_samples for d in setup.devices), kinds=UP_KINDS.get(cfg.method) if server else None,
                  epochs=cfg.epochs, codec=setup.codec)


def _out(cfg, fl: Fleet, rank: int, resume: bool) -> Path:
    """A server's output folder: the run's for server 0; ``OUT/servers/<name>`` for the others (their own
    eval, adapter and metrics, which the test of one logical model compares with server 0's)."""
    if rank == 0:
        return runner.prepare_out(cfg, resume)
    out = Path(cfg.out) / "servers" / fl.servers[rank]
    out.mkdir(parents=True, exist_ok=True)
    return out


def _own_devices(built: runner.Built, fl: Fleet, rank: int) -> None:
    """Make server ``rank``'s setup hold only the devices assigned to it, on its own trace lane."""
    setup = built.setup
    setup.devices = [r for r in setup.devices if fl.home[r.name] == rank]
    setup.server = setup.meter.server_lane = fl.servers[rank]


def _server_sync(cfg, built: runner.Built, fl: Fleet, rank: int, links: ServerLinks) -> ServerSync:
    """Server ``rank``'s backhaul sync (``training.sync``; none: only the last round of each epoch, so that the servers
    still end each epoch as one model), shaped to its ``backhaul`` link under ``--emulate links|all``."""
    sync, srv = built.scenario.training.sync, built.scenario.servers[rank]
    link = None
    if cfg.emulate in ("links", "all") and srv.backhaul is not None:
        link = (srv.backhaul.bandwidth, srv.backhaul.latency)
    samples = sum(r.n_samples for r in built.setup.devices)
    every, mode = (sync.every, sync.mode) if sync is not None else (None, "sync")
    return ServerSync(links, rank, len(fl.servers), every, mode, samples, built.setup.meter, fl.servers[rank], link)


def _device(cfg, built: runner.Built, tr: DistTransport, name: str, offset: float, resume: bool) -> int:
    setup, method = built.setup, built.method
    role = next(d for d in setup.devices if d.name == name)
    torch.manual_seed(role_seed(cfg.seed, name))  # this device's RNG, as the in-process run gives it
    ckpt = method.load_device_state(role) if resume else -1
    method.checkpoint_report = lambda: report_blob(_report(name, setup.meter, tr, offset, method))
    method.hello(role, ckpt)  # CenLoRA's device sends its shard with it (the data placed before training)
    try:
        while True:
            msg = tr.recv_down(name)
            if msg.kind == "end":
                break
            method.handle(role, msg)
    except PeerLost as err:
        print(f"error: device {name}: lost the server ({err.reason}); stopping", file=sys.stderr, flush=True)
        return 3
    if hasattr(method, "finish_moves"):  # handovers due since its last send, as the simulator lists them
        method.finish_moves(name)
    tr.send_up(Message(name, -1, {"blob": report_blob(_report(name, setup.meter, tr, offset, method))}, kind="report"))
    tr.close()
    return 0


def _report(name: str, m, tr: DistTransport, offset: float, method) -> dict:
    """Device ``name``'s measurements so far (its end-of-run report, and its answer to a checkpoint's ``save``)."""
    return {"device": name, "flops": int(m.flops.get(name, 0)), "uplink_bytes": int(m.uplink_bytes.get(name, 0)),
            "phase_s": dict(m.phase_s), "peak_rss_bytes": peak_rss_bytes(), "cpu_s": cpu_seconds() - m.cpu0,
            "clock_offset_s": offset, "stretched_s": m.stretched_s, "header_bytes": tr.header_bytes,
            "events": [list(e) for e in m.events], "handovers": list(getattr(method, "moves", [])),
            "emulation": m.lag.lanes()}


def _server(cfg, built: runner.Built, tr: DistTransport, out: Path, t0: float, resume: bool, fl: Fleet,
            links: ServerLinks | None) -> int:
    setup, method = built.setup, built.method
    names = [d.name for d in setup.devices]  # this server's devices
    if cfg.emulate != "none" and dynamics.emulates_availability(cfg.method):  # what it sends them once gone: uncounted
        tr.departed = dynamics.departed(built.scenario, fl.devices, setup.meter.now, built.info["clock_s"])
        tr.drops = drop_instants(built.scenario, fl.devices, built.info["clock_s"])  # when a gone is due (the cache)
    samples, ckpts = {}, {}
    for n in names:
        try:
            msg = tr.recv_up(n, {"hello"})
            samples[n], ckpts[n] = msg.aux, msg.mb
        except PeerLost as err:
            method.lose(n, f"never joined: {err.reason}")
    setup.samples = samples
    torch.manual_seed(role_seed(cfg.seed, "server"))
    metrics = runner.train_server(cfg, built, out, t0, resume,
                                  check=lambda want: [runner.check_device_checkpoint(n, c, want)
                                                      for n, c in ckpts.items()])
    names = [d.name for d in setup.devices]  # the devices here now (handovers move them)
    for n in names:
        tr.send_down(Message(n, -1, kind="end"))
    reports = {}
    for n in method.live():
        try:
            msg = tr.recv_up(n, {"report"})
            reports[n] = parse_report(msg.tensors["blob"], n, fl.servers)
        except (PeerLost, ValueError) as err:
            print(f"warning: no report from {n} ({err}); its measurements are missing", file=sys.stderr)
            if isinstance(err, ValueError):
                tr.dropped[n] = f"bad report: {err}"
    metrics = merge_reports(metrics, reports, names, setup.server, setup.meter, tr.header_bytes)
    metrics["dropped_peers"] = dict(tr.dropped)
    metrics["encrypted"] = any(ch.encrypted for ch in tr.channels.values())
    events = list(setup.meter.events)
    for r in reports.values():
        events += [TraceEvent(*e) for e in r["events"]]
    events = whole_trace(built.info, events, setup.server)  # a resumed run: the events before its checkpoint first
    metrics = finite(metrics)
    if links is not None:
        parts = links.gather_json({"metrics": metrics, "events": [list(e) for e in events],
                                   "sync": method.sync.summary()})
        if parts is None:  # server 0 writes the run's outputs; the others keep their own in OUT/servers
            write_atomic(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False))
            tr.close()
            return 0
        metrics = merge_servers(parts, fl)
        events = [TraceEvent(*e) for p in parts for e in p["events"]]
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    write_atomic(out / "metrics.json", json.dumps(finite(metrics), indent=1, allow_nan=False))
    runner._write_trace(out, sorted(events, key=lambda e: e.start), metrics)
    tr.close()
    return 0


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
    """Entry of a fault-injection role: its secret in its environment, as a real role has it (a device's: its own
    rank's credential only)."""
    die_with(launcher)
    os.environ[secure.SECRET_FILE_ENV] = secret_file
    os.environ.pop(secure.ENCRYPT_ENV, None)  # a device follows the server's choice
    fn(master, world, rank, log)


def _secret_files(private: Path, roles: list[tuple]) -> dict[int, str]:
    """Rank -> the file its process reads: servers hold the run's fresh secret; each device only its own
    rank's credential, so it can take no other rank."""
    secret_file = str(secure.new_secret_file(private))
    return {rank: secret_file if role == "server" else str(credential_file(private, secret_file, rank))
            for role, rank, _ in roles}


def launch_local(cfg, resume: bool = False, grace_s: float = 10.0, targets: dict | None = None) -> dict:
    """Start the server and one process per device on this machine; wait; return the metrics.

    The server's output is passed through (its ``error:`` line becomes this call's error); every
    role logs to ``OUT/logs/<role>.log`` and their pids are in ``OUT/logs/pids.json``. When the server
    ends, devices get ``grace_s`` seconds to exit and are then killed, so no process outlives the run;
    a server whose heartbeat stops for ``max(2 x --peer-timeout, 10 s)`` is killed as hung. Every role
    dies with the launcher. The run's secret is fresh, in a 0600 file in a private folder, removed at
    the end; servers get it, each device only its own rank's credential (it can take no other rank). ``targets`` (fault injection in tests): rank -> a function run instead of that role, called
    with ``(master, world, rank, log)`` and ``SFSIM_SECRET_FILE`` set.
    """
    import shutil
    import tempfile

    scenario = load_scenario(cfg.devices)
    servers, names = [s.name for s in scenario.servers], [d.name for d in scenario.devices]
    out = runner.prepare_out(cfg, resume)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    cfg_json = json.dumps(dataclasses.asdict(cfg))
    world, master = len(servers) + len(names), f"127.0.0.1:{_free_port()}"
    server_ports(cfg.server_ports, servers, master)  # before any process starts: one line
    ctx = _context()
    roles = [("server", j, "server" if j == 0 else f"server-{n}") for j, n in enumerate(servers)]
    roles += [("device", i, n) for i, n in enumerate(names, start=len(servers))]
    procs, private = [], Path(tempfile.mkdtemp(prefix="sfsim-run-"))  # mode 0700
    files = _secret_files(private, roles)
    # one machine, loopback: plaintext unless SFSIM_ENCRYPT=on (roles fork from a forkserver with its own
    # environment, so the choice travels with them; a role started any other way counts as multi-host)
    encrypt = "off" if secure.encrypt_default(multi_host=False) is False else "on"
    (logs / "server.alive").unlink(missing_ok=True)
    try:
        for role, rank, name in roles:
            log = str(logs / f"{name}.log")
            if targets and rank in targets:
                p = ctx.Process(target=_target_process, args=(targets[rank], files[rank], os.getpid(), master, world, rank,
                                                              log), daemon=False)
            else:
                p = ctx.Process(target=_role_process, args=(cfg_json, role, rank, world, master, resume, log,
                                                            files[rank], encrypt, os.getpid()), daemon=False)
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
        last_error = root_error(last_error, logs, names, [p.exitcode for p in procs[len(servers):]])
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


__all__ = ["Fleet", "fleet", "run", "run_role", "launch_local", "merge_reports", "merge_servers", "finite", "role_main"]
