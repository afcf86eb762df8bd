"""The wait at each epoch's end on a server, as ``sfsim run`` has it (``trainer.run.runner.train_server``).

After an epoch's last step (and its closing backhaul round, with several servers) each server process

1. evaluates ``training.eval_samples`` dev rows with the whole model, forward only, in batches of
   :data:`EVAL_BATCH` rows (``trainer.methods.evaluate.predict``); priced as the scenario's micro-batch
   forward of every layer (:meth:`~sfsim.cost.model.CostModel.eval_forward`) times rows / micro-batch, on the
   server's FLOP rate or its latency profile; plus, from the latency profile's ``eval``
   (``trainer.validate.evalcost``), the model's split, the rows' tokenisation and the process's first
   evaluation's extra, spread evenly over the run's E - 1 waits (only the first pays it; the run's span is the
   same);
2. writes the adapter and the checkpoint: the server's latency profile's ``save`` (measured by
   ``sfsim profile --role server``), 0 on a server rated by ``flops`` alone (nothing measured to price it);
   before the checkpoint it asks each of its devices for its report (``trainer.run.resume.device_reports``): a
   ``save`` message down, which takes the device's downlink latency (the answer is not shaped); the wait is
   the longest of its devices' (those the assignment gives it; :func:`report_seconds`);

and only then starts the next epoch (its devices wait for the ``start`` message). The wait after the
last epoch is outside the run's span in both halves (the trace ends at the last step), so a run of E
epochs has E - 1 of them. Without ``training.eval_samples`` ``sfsim run`` evaluates every dev row of its
task, a size the scenario does not know: the wait is not modelled then (:func:`epoch_end_seconds` is
empty) and ``sfsim simulate`` says so.
"""

from __future__ import annotations

from sfsim.cost.latency import load_latency_profile
from sfsim.cost.model import CostModel
from sfsim.scenario.config import Scenario, Server

EVAL_BATCH = 64  # rows per evaluation forward: trainer.methods.evaluate.predict's batch_size


def eval_seconds(cm: CostModel, server: Server, rows: int) -> float:
    """Seconds ``server`` takes to evaluate ``rows`` dev rows (forward of the whole model, linear in rows).

    Example:
        >>> from sfsim.scenario.config import load_scenario
        >>> sc = load_scenario("profiles/edge.yaml")
        >>> cm = CostModel(sc)
        >>> round(eval_seconds(cm, sc.servers[0], 2 * sc.training.micro_batch)
        ...       / eval_seconds(cm, sc.servers[0], sc.training.micro_batch), 6)
        2.0
    """
    if rows <= 0:
        return 0.0
    return cm.seconds(cm.eval_forward(), server)[0] * rows / cm.micro_batch


def fixed_seconds(server: Server, rows: int, epochs: int) -> float:
    """Seconds of an evaluation of ``rows`` dev rows beyond its forward (split, tokenisation, the first one's
    extra over the ``epochs - 1`` waits): the latency profile's ``eval``, else 0."""
    path = getattr(server, "latency_profile", None)
    ev = load_latency_profile(path).eval if path else None
    if ev is None or epochs < 2:
        return 0.0
    return float(ev.split + rows * ev.tokenise_row + ev.first / (epochs - 1))


def report_seconds(scenario: Scenario, assignment: dict[str, str] | None, server: str) -> float:
    """The longest downlink latency of ``server``'s devices (``assignment``: device -> server; None: none known):
    its ``save`` message's way to each device before the checkpoint."""
    if not assignment:
        return 0.0
    return max((d.downlink.latency for d in scenario.devices if assignment.get(d.name) == server), default=0.0)


def save_seconds(server: Server) -> float:
    """Seconds ``server`` takes to write the adapter and the checkpoint: its latency profile's ``save``, else 0."""
    path = getattr(server, "latency_profile", None)
    if not path:
        return 0.0
    return float(load_latency_profile(path).save or 0.0)


def epoch_end_seconds(scenario: Scenario, cm: CostModel | None = None,
                      assignment: dict[str, str] | None = None) -> dict[str, float]:
    """Server name -> the wait at each of its epoch ends (evaluation, adapter, checkpoint; seconds), or ``{}``
    when ``training.eval_samples`` is unset or the run has one epoch (no wait inside its span). ``assignment``
    (device -> server) gives each server the devices it asks for their reports."""
    tr = scenario.training
    if tr.eval_samples is None or tr.epochs < 2:
        return {}
    cm = cm or CostModel(scenario)
    return {s.name: eval_seconds(cm, s, tr.eval_samples) + fixed_seconds(s, tr.eval_samples, tr.epochs)
            + save_seconds(s) + report_seconds(scenario, assignment, s.name) for s in scenario.servers}
