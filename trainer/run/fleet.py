"""Who is who in a distributed run: the ranks of the servers and the devices, and each device's server."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.run import runner


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
