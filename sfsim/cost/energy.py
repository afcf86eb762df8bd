"""Energy: a device's or server's power figures and the joules a simulated run costs them.

A device type or server may declare ``power: {compute: 6 W, idle: 1.5 W, transmit: 2.5 W}``:

* ``compute``: drawn while the node computes (its busy seconds in the result);
* ``idle``: drawn the rest of the run, until the job ends (waiting, sending, or done);
* ``transmit`` / ``receive``: the radio's draw while it sends on the uplink / receives on the
  downlink (serialisation seconds, ``bytes x 8 / bandwidth``; on a time-varying uplink or with
  handovers, the seconds it actually spent sending or receiving), on top of compute or idle;
* or ``energy_per_bit`` for the radio instead: joules per bit sent or received (``50 nJ/bit``).

So for a device, with ``T`` the makespan, ``busy`` its compute seconds and ``up``/``down`` its
serialisation seconds::

    compute J = compute W x busy;  idle J = idle W x (T - busy)
    radio J   = transmit W x up + receive W x down   (or energy_per_bit x bits sent and received)

A server with ``count`` accelerators has ``power`` per accelerator: compute W x busy seconds over
all of them, idle W x (count x T - busy). Servers have no radio here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from sfsim.scenario.schema import STRICT, JoulesPerBit, Watts


@pydantic_dataclass(config=STRICT, kw_only=True)
class Power:
    """Power figures of one device or one server accelerator (see the module docstring)."""

    compute: Watts
    idle: Watts = 0.0
    transmit: Watts | None = None
    receive: Watts | None = None
    energy_per_bit: JoulesPerBit | None = None

    @model_validator(mode="after")
    def _one_radio_model(self):
        if self.energy_per_bit is not None and (self.transmit is not None or self.receive is not None):
            raise ValueError("give the radio's power as transmit/receive watts or as energy_per_bit, not both")
        return self


@dataclass(frozen=True)
class Joules:
    """Energy of one node over a run, by what drew it (J)."""

    compute: float
    radio: float
    idle: float

    @property
    def total(self) -> float:
        """All of it (J)."""
        return self.compute + self.radio + self.idle

    def to_dict(self) -> dict:
        """``{"compute", "radio", "idle", "total"}`` in joules."""
        return {"compute": self.compute, "radio": self.radio, "idle": self.idle, "total": self.total}


def device_joules(power: Power, makespan: float, busy: float, up_bytes: float, down_bytes: float,
                  uplink_bw: float, downlink_bw: float) -> Joules:
    """A device's joules from its busy seconds and bytes (the formulas of the module docstring)."""
    if power.energy_per_bit is not None:
        radio = power.energy_per_bit * 8.0 * (up_bytes + down_bytes)
    else:
        radio = ((power.transmit or 0.0) * up_bytes * 8.0 / uplink_bw
                 + (power.receive or 0.0) * down_bytes * 8.0 / downlink_bw)
    return Joules(power.compute * busy, radio, power.idle * max(0.0, makespan - busy))


def _uplink_rate(res, d) -> float:
    """The bit/s that turns a device's uplink bytes into its send seconds: nominal, or as sent (the dynamic network)."""
    secs, nbytes = getattr(res, "uplink_send_s", {}).get(d.name), res.uplink_bytes_by_device.get(d.name, 0.0)
    return nbytes * 8.0 / secs if secs and nbytes else d.uplink.bandwidth


def _downlink_rate(res, d) -> float:
    """The same for the downlink: nominal, or bytes over the seconds it spent receiving (the dynamic network)."""
    secs, nbytes = getattr(res, "downlink_recv_s", {}).get(d.name), res.downlink_bytes_by_device.get(d.name, 0.0)
    return nbytes * 8.0 / secs if secs and nbytes else d.downlink.bandwidth


def run_energy(res, scenario) -> dict | None:
    """Joules per device and per server of a :class:`~sfsim.outputs.result.SimResult`, where power is given.

    Returns:
        None when no device or server declares ``power``; else ``{"devices": {name: Joules.to_dict()},
        "servers": {...}, "device_total_j", "server_total_j"}`` over the nodes with power figures.
    """
    T = res.makespan_s
    devices = {d.name: device_joules(d.power, T, res.device_busy_s.get(d.name, 0.0),
                                     res.uplink_bytes_by_device.get(d.name, 0.0),
                                     res.downlink_bytes_by_device.get(d.name, 0.0),
                                     _uplink_rate(res, d), _downlink_rate(res, d))
               for d in scenario.devices if getattr(d, "power", None) is not None}
    servers = {}
    for s in scenario.servers:
        if getattr(s, "power", None) is not None:
            busy = res.server_busy_s.get(s.name, 0.0)
            servers[s.name] = Joules(s.power.compute * busy, 0.0, s.power.idle * max(0.0, s.count * T - busy))
    if not devices and not servers:
        return None
    return {"devices": {k: v.to_dict() for k, v in devices.items()},
            "servers": {k: v.to_dict() for k, v in servers.items()},
            "device_total_j": sum(v.total for v in devices.values()),
            "server_total_j": sum(v.total for v in servers.values())}
