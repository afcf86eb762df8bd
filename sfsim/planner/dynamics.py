"""Effective stage times for the planner when the network is dynamic (handover, varying links, churn).

The planner's analytic model (:mod:`sfsim.planner.model`) sees each device as a stream of equal
micro-batches with a constant forward time ``f`` and uplink time ``s``. When a device's uplink
varies (a trace, a Gilbert-Elliott channel, fading), hands over to another link, or pauses while
offline, those constants are replaced by **effective** ones, computed from the very rate processes
the simulator draws (same seeds, same files)::

    bits_total = N * uplink_bits(k)
    s_eff(k)   = uplink_bits(k) / (bits_total / T_link)     T_link = when the device's link, sending
                                                             back to back from t = 0 (across its
                                                             handover legs, times its availability
                                                             with churn: pause), has carried bits_total
    f_eff(k)   = f(k) * T_comp / (N * f(k))                 T_comp = when N * f(k) seconds of compute,
                                                             run only while online (pause), are done

So a link whose first minutes are slower than its long-run mean is planned at what the device will
really get over its own run, not at the trace's average. A type's devices draw different channels:
the type takes its slowest (largest ``f_eff`` and ``s_eff``) over at most :data:`SAMPLE` of them.

Not modelled here (the simulated time of each candidate, which the planner reports, includes them):
a handover moves the device's later micro-batches to another server, but the plan's server shares
follow the starting assignment; ``churn: drop`` devices are planned as if they stayed (they leave at
their first outage, which can only shorten their part of the run); a device that is never online
long enough to finish keeps its static times. With any of these, the analytic figures are estimates,
not bounds, and ``sfsim plan`` prints no lower bound.
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.network.legs import availability_of, needs_motion, uplink_rate
from sfsim.network.linkrate import Product, finish

SAMPLE = 8
"""Devices per type whose rate processes are drawn (the slowest of them stands for the type)."""


def is_dynamic(device) -> bool:
    """True when a scenario device hands over, has a time-varying uplink or declares availability."""
    return needs_motion(device, downlink=False)


def describe(scenario) -> str:
    """The dynamic parts of a scenario in a few words ("" when none), for the plan's printout."""
    parts = {"handover": [], "varying uplink": [], "availability": []}
    for d in scenario.devices:
        if d.handover:
            parts["handover"].append(d.type)
        if d.uplink.varies or any(h.uplink is not None and h.uplink.varies for h in d.handover):
            parts["varying uplink"].append(d.type)
        if d.availability is not None:
            parts["availability"].append(f"{d.type} ({d.availability.churn})")
    return "; ".join(f"{k}: {', '.join(dict.fromkeys(v))}" for k, v in parts.items() if v)


def effective_stages(scenario, types, f: np.ndarray, up_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Effective forward and uplink seconds per micro-batch, shape (types, cuts) each; None if all static.

    Args:
        scenario: the scenario (its devices' links, handovers and availability).
        types: the planner's :class:`~sfsim.planner.model.TypeInfo` list.
        f: static forward seconds per micro-batch, (types, cuts).
        up_bytes: uplink bytes per micro-batch at each cut, (cuts,).
    """
    if not any(is_dynamic(d) for d in scenario.devices):
        return None
    by_name = {d.name: d for d in scenario.devices}
    f_eff = f.copy()
    s_eff = np.array([up_bytes * 8.0 / t.bandwidth for t in types])
    for ti, t in enumerate(types):
        devs = [by_name[x] for x in t.devices[:SAMPLE]]
        if not any(is_dynamic(d) for d in devs):
            continue
        n = max(t.sent_units, 1.0)
        s_row = np.zeros(f.shape[1])
        for d in devs:
            avail = availability_of(scenario, d) if d.availability is not None and d.availability.churn == "pause" \
                else None
            link = uplink_rate(scenario, d)
            if avail is not None:
                link = Product(link, avail)
            done: dict[float, float] = {}  # bits per micro-batch -> effective seconds (cuts often share it)
            for ki in range(f.shape[1]):
                if avail is not None and f[ti, ki] > 0:
                    end = finish(avail, 0.0, n * f[ti, ki])
                    if end < math.inf:
                        f_eff[ti, ki] = max(f_eff[ti, ki], end / n)
                bits = float(up_bytes[ki]) * 8.0
                if bits not in done:
                    end = finish(link, 0.0, n * bits) if bits > 0 else 0.0
                    done[bits] = end / n if end < math.inf else bits / t.bandwidth
                s_row[ki] = max(s_row[ki], done[bits])
        s_eff[ti] = s_row
    return f_eff, s_eff
