"""SplitLoRA: split federated learning with LoRA on both sides, replayed as the trainer runs it.

This follows :mod:`trainer.methods.splitlora` on the distributed runtime step for step, per server
(the shared server model runs on one accelerator, worker 0; FedAvg FLOPs are not counted):

* **A micro-batch**: the server sends the client a ``fwd`` command; the client runs ``F`` once it has
  the command and is free, and sends activations and labels up; the server runs ``F``, ``B`` (the
  cut-layer gradient goes down on lane ``downlink:<dev>`` now), ``W`` (fused: ``BW``, then the
  gradient), and a ``step`` after every ``accumulate`` (A) micro-batches it trained on; only then does
  it send that client its next ``fwd``. The client runs ``B`` and ``W`` when the gradient arrives and a
  ``step`` after every A of its own backward passes. A client never has two micro-batches out, and
  computes while the server serves the others. Commands (``fwd``, ``sync``) carry no payload: one
  downlink latency, queued behind what is already on that downlink (a gradient, an average).
* **Client order** (``training.client_order``, :data:`CLIENT_ORDERS`):

  - ``interleaved`` (SplitLoRA's reference code): the clients' micro-batches in the server's order.
    ``training.server_policy`` ``paced-proportional`` or ``proportional`` (the trainer's default
    ``--server-order proportional``) and ``paced-round-robin`` or ``round-robin`` are the trainer's
    fixed orders (:func:`sfsim.engine.pacing.server_order`, one per epoch): the server waits for the named
    client even when others have arrived. ``fifo`` (the scenario default) and ``pool`` take arrivals in
    order, as ``--server-order fifo`` on the distributed runtime (the trainer has no pool for
    SplitLoRA). Training goes in *segments* of ``fedavg_every`` server steps (``fedavg_every`` x A
    micro-batches; the count runs on across epochs): the server sends ``fwd`` only for its segment's
    micro-batches, steps on a partial window at its end, then FedAvg: every client gets ``sync``, steps
    on a partial window, uploads its adapters; once all have arrived the server runs ``aggregate``
    (``aggregate`` seconds per client) and sends the average down to every client. Each epoch ends
    with a segment end and a FedAvg.
  - ``sequential`` (classic split learning): client after client in device order, each over its whole
    epoch; after a client's last micro-batch the server steps on a partial window and sends ``sync``,
    the client steps on its own and uploads its adapters, and the server hands them down to the next
    client before its first ``fwd`` (the very first client of the run starts from the initial
    adapters). No FedAvg and no aggregate; ``fedavg_every`` and ``server_policy`` do not apply.

* **Several servers** with ``training.sync`` (:class:`sfsim.network.backhaul.ServerRounds`, as
  :mod:`trainer.transport.backhaul`): the server's optimizer steps count (one on a partial window too);
  every ``every``-th step is followed by a round of its LoRA and head (``every: 1`` in ``sync`` mode: the
  gradients before each step), a barrier in ``sync`` mode; each epoch ends, after the clients' FedAvg, with
  rounds of zeros until no server trains and a closing round that carries the clients' average too. Every
  server takes part in every round, one without clients too. With handovers a server waiting for a visitor
  joins exactly the rounds another server opens from a step, with zeros, until the visitor's ``join`` arrives
  (:meth:`sfsim.network.backhaul.ServerRounds.idle`, the runtime's ``ServerSync.idle``), and each epoch ends
  with those rounds, a barrier, before the next starts; without ``training.sync`` too (each epoch's closing round
  alone, as ``sfsim run``: its ``ServerSync.finish``), and a released client's ``join`` reaches its new server when
  the runtime's does (:meth:`~sfsim.schedules.splitlora.intime.InTime.hand_over`). With no backhaul link the
  closing rounds take no time and are not modelled (the epochs back to back), except with the epoch-end wait
  (``training.eval_samples``, several epochs): then they are, on links that take no time, so that each server
  waits for the others' epochs and then for its own evaluation, as ``sfsim run``'s servers do
  (:func:`~sfsim.schedules.splitlora.schedule.unshaped_rounds`).
* **Codec** (``training.wire_dtype``): the client encodes its activations (in ``F``) and decodes the
  gradient (in ``B``); the server decodes the activations (in ``F``) and encodes the gradient (in ``B``).

Layout: :mod:`.schedule` (build, run), :mod:`.server` (the loop), :mod:`.intime` (the same loop as a process in time),
:mod:`.moves` (handovers: the loops in time together).

Until this model the simulator let clients run concurrently on a FIFO server lane with a FedAvg
barrier every ``fedavg_every`` micro-batches of each client and a step after every micro-batch; the
trainer does none of that (see ``tests/test_schedules.py`` for the hand-derived timelines).
"""

from __future__ import annotations

from sfsim.engine.pacing import FIXED_ORDERS
from sfsim.methods import CLIENT_ORDERS
from sfsim.schedules.splitlora.schedule import build, network, run
from sfsim.schedules.splitlora.server import Client, Server

__all__ = ["CLIENT_ORDERS", "FIXED_ORDERS", "Client", "Server", "build", "network",
           "run"]
