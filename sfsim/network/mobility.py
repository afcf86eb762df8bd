"""Mobility: a device hands over from one server to another during a run, its links possibly changing.

A device type may list ``handover: [{at: 120 s, to: mec-b, uplink: {bandwidth: 20 Mbps}}]``. At
``at`` the device attaches to server ``to``: every micro-batch whose send starts at or after
``at`` goes to ``to`` over the new ``uplink`` (when given; else the link stays as it was), while the
micro-batches already sent (in flight or waiting at the old server) finish there. A ``downlink``
given with the handover carries every transfer down that starts at or after ``at`` (SplitLoRA's
gradients and averages, FedLoRA's downloads; SplitFrozen sends nothing down). A device waiting
for the old server's credit at ``at`` stops waiting and asks the new server. So a handover at time
``t`` moves exactly the micro-batches whose send starts at or after ``t``.

Times must increase along the list and each ``to`` must name a server. The planner plans the
starting assignment; handovers are simulated for every schedule with device links (:mod:`sfsim.schedules.network`). Each
handover shows in the trace as an instant op ``handover`` on the device's lane and in the result's
``handovers`` list.
"""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from sfsim.errors import ConfigError
from sfsim.network.linkrate import Link
from sfsim.scenario.schema import STRICT, PositiveSeconds


@dataclass(config=STRICT, kw_only=True)
class Handover:
    """At time ``at`` the device moves to server ``to``, optionally over a new ``uplink`` and ``downlink``."""

    at: PositiveSeconds = Field(description="when the device attaches to the new server (e.g. 120 s)")
    to: str = Field(description="name of the server it moves to")
    uplink: Link | None = Field(default=None, description="its uplink from then on (default: unchanged)")
    downlink: Link | None = Field(default=None, description="its downlink from then on (default: unchanged)")


def check_handovers(handovers: list[Handover], servers: list[str], file: str | None, key: str) -> None:
    """Each ``to`` names a server and the times increase (one-line :class:`ConfigError` otherwise)."""
    for j, h in enumerate(handovers):
        if h.to not in servers:
            raise ConfigError(file, f"{key}[{j}].to", f"no server named {h.to!r}; servers are: {', '.join(servers)}")
        if j and h.at <= handovers[j - 1].at:
            raise ConfigError(file, f"{key}[{j}].at", f"{h.at:g} s is not after the previous handover at "
                              f"{handovers[j - 1].at:g} s; list handovers in time order")


def stages(devices, assignment: dict[str, str]) -> list[dict[str, str]]:
    """The assignment after each device's first, second, ... handover (a device out of handovers stays put).

    The simulator checks memory on each, as the planner does on the starting assignment.
    """
    rounds = max((len(d.handover) for d in devices), default=0)
    out = []
    for k in range(1, rounds + 1):
        out.append({d.name: (d.handover[min(k, len(d.handover)) - 1].to if d.handover else assignment[d.name])
                    for d in devices})
    return out
