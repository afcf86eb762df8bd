"""Who is who in a distributed run: the ranks of the servers and the devices, each device's server, and the
legs and shaped links each device has (its handovers' servers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.run import runner
from trainer.transport import dynamics
from trainer.transport.distributed import LinkShape
from trainer.transport.rendezvous import ENDED


@dataclass(frozen=True)
class Fleet:
    """Who is who in a distributed run: servers on ranks ``0..S-1``, device ``i`` on rank ``S + i``."""

    servers: list[str]
    devices: list[str]
    home: dict[str, int]  # device -> the rank (index) of its server

    @property
    def world(self) -> int:
        """Processes in the run."""
        return len(self.servers) + len(self.devices)

    def rank_of(self, name: str) -> int:
        """The rank of a server or device."""
        return self.servers.index(name) if name in self.servers else len(self.servers) + self.devices.index(name)


def fleet(built: runner.Built) -> Fleet:
    """The run's ranks from its scenario and the resolved assignment (plan, pin, or least-loaded)."""
    servers = [s.name for s in built.scenario.servers]
    names = [d.name for d in built.setup.devices]
    return Fleet(servers, names, {n: servers.index(built.split.assignment[n]) for n in names})


def device_legs(cfg, built: runner.Built, fl: Fleet) -> dict[str, list[tuple]]:
    """Each device's legs as server ranks: ``(at s, rank, uplink rate, downlink rate, (uplink, downlink))``
    (:func:`trainer.transport.dynamics.legs`); handovers only when the network is emulated."""
    out = {}
    for d in built.scenario.devices:
        lg = dynamics.legs(built.scenario, d, fl.servers[fl.home[d.name]])
        if cfg.emulate == "none" or not dynamics.emulates_availability(cfg.method):  # cenlora: no device links
            lg = lg[:1]
        out[d.name] = [(at, fl.servers.index(srv), *rest) for at, srv, *rest in lg]
    return out


def shaping(cfg, legs: dict[str, list[tuple]]) -> dict | None:
    """Each device's (uplink, downlink) as shaped under ``--emulate links|all``, per server rank for a device
    that hands over (rates from ``trainer.transport.dynamics``)."""
    if cfg.emulate not in ("links", "all"):
        return None
    out = {}
    for name, lg in legs.items():
        shapes = {r: (LinkShape(up.bandwidth, up.latency, up_rate), LinkShape(down.bandwidth, down.latency, down_rate))
                  for _, r, up_rate, down_rate, (up, down) in lg}
        out[name] = shapes if len(shapes) > 1 else next(iter(shapes.values()))
    return out


def root_error(server_error: str | None, logs: Path, devices: list[str], codes: list[int | None]) -> str | None:
    """The error a run reports: the server's, unless it only says that devices did not join and one of
    ``devices`` (exit statuses ``codes``) failed first with an ``error:`` line in ``logs/<name>.log``: that
    line, naming the device (a device that died before the rendezvous says why; one that only saw server 0 give up
    the rendezvous is not the cause)."""
    if not server_error or "did not join" not in server_error:
        return server_error
    for name, code in zip(devices, codes, strict=True):
        log = logs / f"{name}.log"
        lines = log.read_text(errors="replace").splitlines() if code not in (0, None) and log.is_file() else []
        errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ") and ENDED not in ln]
        if errors:
            return f"error: {name}: {errors[-1]}"
    return server_error
