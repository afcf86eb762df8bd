"""``sfsim validate``'s stage rows that are not one op on one kind of lane: the wire codec and the backhaul sync.

* ``sync``: ``sync-send`` and ``sync-recv`` on the ``backhaul:<server>`` lanes, on both sides: the seconds the
  servers' backhauls are busy with sync rounds (:mod:`sfsim.network.backhaul`, :mod:`trainer.transport.backhaul`).
* ``codec``: encoding the activations on the devices and decoding them on the servers (``training.wire_dtype``
  other than fp32). Measured: the run's ``codec_encode`` and ``codec_decode`` phases (every process's, summed);
  predicted: every micro-batch a device sent times its encode plus its server's decode
  (:meth:`sfsim.cost.model.CostModel.codec_seconds`: a latency profile's codec timings; zero on a device rated
  in FLOPS, whose codec the simulator takes as free). Both sides also count these seconds inside
  ``device_forward`` and ``server_F``; the row shows them apart. SplitLoRA codes its cut-layer gradients too: the
  server encodes and the device decodes each one as well. FedLoRA and CenLoRA send no activations (row 0).
"""

from __future__ import annotations

from sfsim.cost.model import CostModel
from sfsim.methods import SPLITFROZEN
from sfsim.outputs.trace import TraceEvent

SYNC_OPS = ("sync-send", "sync-recv")


def is_sync(e: TraceEvent) -> bool:
    """Whether ``e`` is a backhaul transfer of a sync round."""
    return e.lane.startswith("backhaul:") and e.op in SYNC_OPS


def codec_measured(metrics: dict) -> float:
    """Seconds the run spent encoding and decoding on the wire (its ``codec_*`` phases)."""
    return sum(v for k, v in metrics.get("phase_s", {}).items() if k.startswith("codec_"))


def codec_predicted(sc, events: list[TraceEvent], assignment: dict[str, str], method: str) -> float:
    """The simulator's codec seconds on scenario ``sc``: each device's sent micro-batches (its distinct forwards
    in ``events``) times its encode plus its server's decode (SplitLoRA: and the gradient's way back, the server's
    encode and the device's decode); 0 for a method that sends no activations."""
    if method not in SPLITFROZEN and method != "splitlora":
        return 0.0
    both = method == "splitlora"
    cm = CostModel(sc)
    devices = {d.name: d for d in sc.devices}
    sent: dict[str, set[int]] = {}
    for e in events:
        if e.op == "F" and e.lane in devices:
            sent.setdefault(e.lane, set()).add(e.mb)
    ops = (("encode", "decode"), ("decode", "encode")) if both else (("encode", "decode"),)
    return sum(len(mbs) * sum(cm.codec_seconds(devices[n], dev) + cm.codec_seconds(sc.server_by_name[assignment[n]], srv)
                              for dev, srv in ops)
               for n, mbs in sent.items())


__all__ = ["SYNC_OPS", "codec_measured", "codec_predicted", "is_sync"]
