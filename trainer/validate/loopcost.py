"""A server training loop's own work outside its timed ops: the profile's ``bookkeeping`` (role server).

Between a server's forward, backward and optimizer step ops (what the profile's grid times, and what a run's trace
shows as ops) its loop does work of its own, on the critical path of a server-bound run. Traced in a quiet
``sfsim validate`` run of CenLoRA on a tiny GPT-2 (``bench/validate_network.py --only epochs2-cenlora``, load 1.4):
0.06 ms between a micro-batch's backward and the step, 0.19-0.28 ms between the step and the next forward, 0.27 ms a
micro-batch in all (16 micro-batches, one step each); timed in that loop (load 6): the next micro-batch unpacked
0.10 ms, the loss read and the labels recorded 0.06 ms, the runner's per-step callback 0.11 ms, the step's end
(checkpoint hook) 0.03 ms.

:func:`bookkeeping` times the same calls, each right after a real training micro-batch of the server's model (so
with the caches a run leaves them in: timed back to back, cache-hot, they took about 0.01 ms against 0.2), at the
grid's largest shape, in this thread's CPU time (:func:`trainer.validate.firstcall.cpu_clock`: a loaded machine's
waits for a core stay out; its contention for the caches does not):

* ``micro_batch``: the next micro-batch's rows taken from the server's data, trimmed and put on the server's device
  (``trainer.transport.runtime.trim``, ``trainer.methods.common.from_wire``), its forward and backward metered
  (:meth:`trainer.run.measure.Meter.compute` around no work: the trace event and the FLOP count's cache, which a
  run's op pays beside its compute), the loss read back (``loss.item()``) and the labels recorded
  (``Method.record``'s list);
* ``step``: the optimizer's parameters gathered and the step metered (``Method.optimizer_step``), and the runner's
  per-step callback (the progress bar, disabled as in ``sfsim validate`` and ``--quiet``; a ``steps.csv`` row
  written and flushed by :class:`trainer.run.steplog.StepLog`).

Not in it: the ``training_mode`` walk over every module (every method's server does it once an epoch, not per
micro-batch: tests/test_cenlora_modes.py, tests/test_server_modes.py), and the transport's receive and credit.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable

import torch

from trainer.methods.common import from_wire
from trainer.run.measure import Meter
from trainer.run.steplog import StepLog
from trainer.transport.runtime import trim
from trainer.validate.firstcall import cpu_clock, training_step


def bookkeeping(parts, lm, spec, sync: Callable[[], None], autocast: torch.dtype | None, rounds: int = 15) -> dict:
    """Median seconds of a server loop's own work per micro-batch and per step (see the module), over ``rounds``
    training micro-batches after ``spec.warmup`` untimed ones; each figure rounded to 0.1 us."""
    from tqdm import tqdm

    mb, seq = spec.micro_batches[-1], spec.seq_lens[-1]
    g = torch.Generator().manual_seed(13)
    rows = 4 * mb  # the server's data (CenLoRA's union of shards): micro-batches are drawn from its rows
    ids = torch.randint(0, lm.model.config.vocab_size, (rows, seq), generator=g)  # (N, T)
    labels = ids.clone() if parts.is_lm else torch.randint(0, spec.num_labels, (rows,), generator=g)  # (N, T) | (N,)
    data = {"input_ids": ids, "attention_mask": torch.ones(rows, seq, dtype=torch.long), "labels": labels}
    train = training_step(parts, lm, spec, autocast)
    clock = cpu_clock(parts.device)
    meter = Meter("server")
    per_mb, per_step, stream, done = [], [], [], 0
    with tempfile.TemporaryDirectory() as folder:
        log = StepLog(folder, "csv")
        bar = tqdm(total=rounds * mb, disable=True)
        for r in range(spec.warmup + rounds):
            loss = train()
            sync()
            idx = torch.randperm(rows, generator=g)[:mb]  # (B,) the next micro-batch's rows
            t0 = clock()
            b = from_wire(trim({k: v[idx] for k, v in data.items()}), parts.device)
            key = tuple(b["input_ids"].shape)
            for op in ("F", "BW"):  # the runtime meters each op (the trace event, the FLOP count's cache)
                with meter.compute("server", op, f"server_{op}", mb=r, key=key):
                    pass
            value = loss.item()
            stream.append(("device", b["labels"].flatten().tolist()))
            t1 = clock()
            done += mb
            params = [p for group in parts.opt_all.param_groups for p in group["params"]]
            with meter.compute("server", "step", "server_step", count=False):
                pass
            bar.update(mb)
            bar.set_postfix(step=r + 1, loss=f"{value:.4f}", sps=f"{done:.1f}")
            log.step(r + 1, 1, done, value, float(done), 0.0)
            t2 = clock()
            if r >= spec.warmup and params:
                per_mb.append(t1 - t0)
                per_step.append(t2 - t1)
        bar.close()
        log.close()
    return {"micro_batch": round(statistics.median(per_mb), 7), "step": round(statistics.median(per_step), 7)}
