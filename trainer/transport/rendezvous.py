"""How the processes of a distributed run find each other: admission, one channel per pair that talks, clock.

Ranks ``0..S-1`` are the scenario's S servers, rank ``S + i`` is device ``i``. Every process proves it
holds its rank's key (from the run's secret, or its own credential: :func:`credential_file`) to server 0
before it gets that rank (:func:`trainer.transport.secure.admit`), so admission covers every rank, servers
included, and a device can take no other device's rank. With several servers:

* each server ``j >= 1``, once admitted, listens on the address it reached server 0 from, on its port
  in ``--server-ports`` (a fixed port a firewall can open) or else a fresh one, and sends that port to
  server 0 over its channel;
* server 0 sends every device the directory of the other servers' admission addresses;
* each device then joins every other server it may talk to (its assigned one and every handover
  target) with the same challenge-response; server ``j`` admits exactly the devices that visit it.

So every device<->server pair that exchanges messages has its own admitted (and, when on, encrypted)
channel, and server ``j`` <-> server 0 has one too: the backhaul sync runs over those
(:mod:`trainer.transport.backhaul`), never over gloo, which only forms the group and syncs the clocks.

Before the directory, server 0 tells every other rank where the run starts (:class:`Start`): the run's clock
at this attempt's 0 (a resumed run's checkpoint; 0 for a fresh run) and the leg each device was on then. A
device or server on another machine has no access to server 0's checkpoint: this is how it resumes on the
run's clock. Every process works out whom it visits from it (``visits`` as a function of the start).
"""

from __future__ import annotations

import datetime
import math
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sfsim.errors import SfsimError
from trainer.run.measure import Meter
from trainer.transport import secure
from trainer.transport.wire import WireError

_ENTRY = struct.Struct(">64sH")  # one directory entry: the server's host (ASCII, zero-padded) and admission port
_PORT = struct.Struct(">H")
ENDED = "rendezvous: server 0 ended the rendezvous before the run started (its own error says why)"
"""A process's error when server 0 gives up the rendezvous (a consequence: the run reports server 0's error)."""
_CLOCK = struct.Struct(">d")  # the start frame: the run's clock at this attempt's 0, then one _PORT-sized leg a device


@dataclass(frozen=True)
class Start:
    """Where this attempt starts on the run's clock (module docstring): ``clock_s`` (0 for a fresh run; a resumed
    run's clock at its checkpoint) and ``legs``, per device in scenario order, the index of the leg it was on then."""

    clock_s: float = 0.0
    legs: tuple[int, ...] = ()

    def frame(self, n_devices: int) -> bytes:
        """The bytes server 0 sends (a fresh run's zeros when ``legs`` is empty)."""
        legs = self.legs or (0,) * n_devices
        return _CLOCK.pack(self.clock_s) + b"".join(_PORT.pack(k) for k in legs)


def read_start(raw: bytes, n_devices: int) -> Start:
    """A start frame from server 0, checked like any peer field: the clock finite and >= 0, one leg a device.

    Raises:
        WireError: a frame of another length or a clock that is not a time (one line)."""
    if len(raw) != _CLOCK.size + _PORT.size * n_devices:
        raise WireError(f"server 0's start frame has {len(raw)} bytes, not {_CLOCK.size + _PORT.size * n_devices}")
    (clock,) = _CLOCK.unpack_from(raw, 0)
    if not math.isfinite(clock) or clock < 0:
        raise WireError(f"server 0's start frame gives the run's clock {clock}; it must be finite and >= 0")
    legs = tuple(_PORT.unpack_from(raw, _CLOCK.size + _PORT.size * i)[0] for i in range(n_devices))
    return Start(clock, legs)

_KEEP: list = []  # the store's listening socket and the store itself live as long as the process group


def _address(master: str | None) -> tuple[str, int, str | None]:
    """(host, admission port, gloo init method) of ``master`` (``None``: torchrun's MASTER_ADDR/PORT)."""
    if master is None:  # torchrun: its agent's store is on MASTER_PORT; admission listens on the port after it
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1, "env://"
    host, _, port = master.rpartition(":")
    if not host or not port.isdigit():
        raise SfsimError(f"--master {master!r} is not HOST:PORT (e.g. 10.0.0.2:29500)")
    return host.strip("[]"), int(port), None


def credential_file(folder: Path, secret_file: str | Path, rank: int) -> Path:
    """A new 0600 file in ``folder`` holding rank ``rank``'s credential alone (:func:`~trainer.transport.secure.
    role_credential`) from the run's secret in ``secret_file``: a device given it can take no other rank."""
    secret = Path(secret_file).read_bytes().strip()
    path = Path(folder) / f"role-{rank}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secure.role_credential(secret, rank))
    return path


def parse_ports(text: str | None) -> list[int]:
    """``--server-ports 29600,29601`` as a list of ports (None or empty: none given); one-line errors.

    Example:
        >>> parse_ports("29600, 29601")
        [29600, 29601]
    """
    if not text:
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise SfsimError(f"--server-ports {text}: {part!r} is not a port in 1..65535 (e.g. --server-ports 29600,29601)")
        if int(part) in out:
            raise SfsimError(f"--server-ports {text}: port {part} is given twice; each server needs its own")
        out.append(int(part))
    return out


def server_ports(text: str | None, servers: list[str], master: str | None) -> dict[int, int]:
    """Server rank ``j >= 1`` -> the port it admits devices on (``--server-ports``, one per server after the
    first, in scenario order); empty when not given (each then takes a free port).

    Raises:
        SfsimError: not one port per server after the first, or a port that is the master's (admission, and
            under torchrun the rendezvous store's).
    """
    ports = parse_ports(text)
    if not ports:
        return {}
    if len(ports) != len(servers) - 1:
        raise SfsimError(f"--server-ports {text}: the scenario has {len(servers)} servers, so give "
                         f"{len(servers) - 1} port(s), one for each server after {servers[0]} "
                         f"({', '.join(servers[1:]) or 'none'}); server 0 admits on --master's port")
    taken = {}
    if master is not None:
        taken[_address(master)[1]] = "--master's port"
    elif os.environ.get("MASTER_PORT", "").isdigit():  # torchrun: its store, then server 0's admission
        store = int(os.environ["MASTER_PORT"])
        taken = {store: "torchrun's store (MASTER_PORT)", store + 1: "server 0's admission port (MASTER_PORT + 1)"}
    for port, name in zip(ports, servers[1:], strict=True):
        if port in taken:
            raise SfsimError(f"--server-ports {text}: {port} for server {name} is {taken[port]}; choose another")
    return dict(enumerate(ports, start=1))


def _admit_all(host: str, port: int, method, world: int, servers: list[str], names: list[str], secret: bytes,
               encrypt: bool, rendezvous_s: float, td: datetime.timedelta, log, start: Start) -> tuple[dict, object]:
    """Server 0's side of :func:`connect`: admit every other rank on the master address, tell each the run's
    :class:`Start`, share the servers' directory, and open the rendezvous store (None with an ``init_method``).
    Returns (channels, store)."""
    n_srv = len(servers)
    lsock = secure.listen(host, port)
    ssock = secure.listen(host, 0) if method is None else None
    store_port = ssock.getsockname()[1] if ssock is not None else 0
    roles = {r: (f"server {servers[r]}" if r < n_srv else names[r - n_srv]) for r in range(1, world)}
    try:
        channels = secure.admit(lsock, secret, roles, rendezvous_s, store_port, encrypt, log)
    finally:
        lsock.close()
    try:
        frame = start.frame(len(names))
        for r in range(1, world):
            channels[r].send(frame)
        _send_directory(channels, n_srv, world)
    except (OSError, WireError) as err:
        raise SfsimError(f"rendezvous: a server or device broke off while server 0 shared where the servers "
                         f"admit devices ({err})") from None
    store = None if ssock is None else dist.TCPStore(host, store_port, world, True, td, wait_for_workers=False,
                                                     master_listen_fd=ssock.fileno())
    _KEEP.extend([ssock, store])
    return channels, store


def connect(rank: int, world: int, master: str | None, names: list[str], secret: bytes, encrypt: bool,
            rendezvous_s: float, timeout_s: float = 600.0, log=None, servers: list[str] | None = None,
            visits: dict[str, list[int]] | Callable[[Start], dict[str, list[int]]] | None = None,
            ports: dict[int, int] | None = None, start: Start | None = None) -> dict[int, secure.Channel]:
    """Admit every other rank (server 0) or join, open the channels of this process, form the gloo group.

    Server 0 listens on the master address only: a process gets its rank after proving it holds
    ``secret``; the rendezvous store then binds a fresh port on the same address, which only admitted
    processes learn. Every admission gives up after ``rendezvous_s`` (server ``j``: twice that, as its
    devices come after server 0's) with a one-line error naming the ranks that did not join.

    Args:
        names: device names in scenario order (device ``i`` is rank ``len(servers) + i``).
        servers: server names in scenario order (default: one server).
        visits: device name -> every server rank it talks to (default: server 0 only); or a function of the
            run's :class:`Start` giving it (called once on every rank, with what server 0 told).
        start: server 0's :class:`Start` to tell the others (default: a fresh run's).
        ports: server rank ``j >= 1`` -> the port it admits its devices on (:func:`server_ports`; default: a
            free port, which server 0 tells the devices).

    Returns:
        peer rank -> :class:`~trainer.transport.secure.Channel`: server 0 every rank; server ``j``
        server 0 and its visiting devices; a device server 0 and every server it visits.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    servers = servers or ["server"]
    n_srv = len(servers)
    host, port, method = _address(master)
    if host in ("127.0.0.1", "localhost", "::1"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's own listener stays on loopback too
    td = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        start = start or Start()
        channels, store = _admit_all(host, port, method, world, servers, names, secret, encrypt, rendezvous_s, td, log,
                                     start)
        visits = visits(start) if callable(visits) else visits
    else:
        ch, store_port = secure.join(host, port, rank, secret, timeout_s)
        channels = {0: ch}
        try:
            start = read_start(ch.recv(_CLOCK.size + _PORT.size * len(names)), len(names))
        except ConnectionError:
            raise SfsimError(ENDED) from None
        except (OSError, WireError) as err:
            raise SfsimError(f"rendezvous: rank {rank} did not get a usable start from server 0 ({err})") from None
        visits = visits(start) if callable(visits) else visits
        if rank < n_srv:
            channels |= _admit_visitors(ch, rank, secret, names, n_srv, visits, 2 * rendezvous_s, log,
                                        (ports or {}).get(rank, 0))
        elif n_srv > 1:
            try:
                channels |= _join_servers(ch, rank, secret, names, n_srv, visits, timeout_s)
            except (OSError, WireError) as err:
                raise SfsimError(f"rendezvous: rank {rank} did not get server 0's directory of servers ({err})") from None
        store = None if method is not None else dist.TCPStore(host, store_port, world, False, td)
        _KEEP.append(store)
    if store is None:
        dist.init_process_group("gloo", init_method=method, rank=rank, world_size=world, timeout=td)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=td)
    return channels


def _send_directory(channels: dict[int, secure.Channel], n_srv: int, world: int) -> None:
    """Server 0: read each other server's admission port, then tell every device where each server admits."""
    if n_srv < 2:
        return
    entries = []
    for j in range(1, n_srv):
        (port,) = _PORT.unpack(channels[j].recv(_PORT.size))
        host = channels[j].sock.getpeername()[0]  # the address server j reached us from: it listens there
        entries.append(_ENTRY.pack(host.encode(), port))
    frame = b"".join(entries)
    for r in range(n_srv, world):
        channels[r].send(frame)


def _admit_visitors(ch0: secure.Channel, rank: int, secret: bytes, names: list[str], n_srv: int,
                    visits: dict[str, list[int]] | None, deadline_s: float, log,
                    port: int = 0) -> dict[int, secure.Channel]:
    """Server ``rank >= 1``: listen where server 0 sees us (on ``port``, 0: a free one), say the port, admit
    the devices that visit us."""
    host = ch0.sock.getsockname()[0]
    try:
        lsock = secure.listen(host, port)
    except SfsimError:
        raise SfsimError(f"server rank {rank} cannot listen on {host}:{port} for its devices (in use?): choose "
                         "another port in --server-ports") from None
    log(f"server rank {rank} admits its devices on {host}:{lsock.getsockname()[1]}")
    try:
        ch0.send(_PORT.pack(lsock.getsockname()[1]))
        mine = {n_srv + i: n for i, n in enumerate(names) if rank in (visits or {}).get(n, [0])}
        return secure.admit(lsock, secret, mine, deadline_s, 0, ch0.encrypted, log) if mine else {}
    finally:
        lsock.close()


def _join_servers(ch0: secure.Channel, rank: int, secret: bytes, names: list[str], n_srv: int,
                  visits: dict[str, list[int]] | None, timeout_s: float) -> dict[int, secure.Channel]:
    """A device: read server 0's directory, then join every other server this device visits."""
    raw = ch0.recv(_ENTRY.size * (n_srv - 1))
    where = {}
    for j in range(1, n_srv):
        host, port = _ENTRY.unpack_from(raw, (j - 1) * _ENTRY.size)
        try:
            where[j] = (host.rstrip(b"\0").decode("ascii"), port)
        except UnicodeDecodeError:
            raise WireError(f"server 0's directory entry for server {j} is not an address") from None
    out = {}
    for j in sorted(set((visits or {}).get(names[rank - n_srv], [0])) - {0}):
        out[j], _ = secure.join(*where[j], rank, secret, timeout_s)
    return out


def sync_clock(meter: Meter, rounds: int = 5) -> float:
    """Put ``meter`` on the server's clock; return this process's wall-clock offset to rank 0 (s).

    Each round: a barrier, then every rank samples ``time.time()`` and all ranks all-gather the
    samples; the offset is the median over rounds of (own sample - rank 0's sample). The shared time
    origin is rank 0's sample of the last round.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    offsets, origin = [], 0.0
    for _ in range(rounds):
        dist.barrier()
        mine = torch.tensor([time.time()], dtype=torch.float64)
        perf = time.perf_counter()
        got = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(got, mine)
        offsets.append(float(got[rank] - got[0]))
        origin, my_wall, my_perf = float(got[0]), float(mine), perf
    offset = sorted(offsets)[len(offsets) // 2]
    # meter.now() = perf_counter() - t0 = seconds since the origin, on the server's clock
    meter.t0 = my_perf - ((my_wall - offset) - origin)
    return offset


__all__ = ["Start", "read_start", "connect", "sync_clock", "parse_ports", "server_ports", "credential_file"]
