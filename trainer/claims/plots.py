"""The claims report's figures (matplotlib, written as PNG): accuracy per partition, savings against cut and bandwidth."""

from __future__ import annotations

from pathlib import Path

from trainer.claims.grid import METHODS, PARTITIONS
from trainer.claims.paper import PAPER, pct
from trainer.claims.render import figure, majority, mean_sd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_figure(groups: dict, model: str, task: str, title: str, path: Path,
                    partitions: tuple[str, ...] = PARTITIONS) -> bool:
    """Grouped bars: one group per partition, one bar per method, error bars = sd over seeds (none for one seed); majority dashed.

    Returns False (and writes nothing) when no cell of this model and task is recorded.
    """
    if not any(k[0] == model and k[1] == task for k in groups):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    accuracy_axes(ax, groups, model, task, partitions)
    ax.set_title(f"{title} (error bars: sd over seeds; none: one seed)", fontsize=10)
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def accuracy_axes(ax, groups: dict, model: str, task: str, partitions: tuple[str, ...]) -> None:
    """Draw :func:`accuracy_figure`'s bars on ``ax``: method ``i`` always in colour ``C{i}``, every partition
    in its own slot (so a figure with few runs keeps the layout of a full one)."""
    width = 0.8 / len(METHODS)
    base = None
    for i, meth in enumerate(METHODS):
        xs, ys, es = [], [], []
        for j, part in enumerate(partitions):
            runs = groups.get((model, task, part, meth), {})
            vals = [100 * v for v in (figure(f, "accuracy") for f in runs.values()) if v is not None]
            base = base or next((majority(f) for f in runs.values() if majority(f)), None)
            if vals:
                m, sd = mean_sd(vals)
                xs.append(j + (i - (len(METHODS) - 1) / 2) * width)
                ys.append(m)
                es.append(float("nan") if sd is None else sd)  # one seed: no error bar (not a zero one)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=meth, color=f"C{i}")
    if base:
        ax.axhline(100 * base, color="black", ls="--", lw=1, label="majority class")
    ax.set_xticks(range(len(partitions)), partitions)
    ax.set_xlim(-0.5, len(partitions) - 0.5)
    ax.set_ylabel("dev accuracy (%)")
    ax.set_ylim(0, 100)


def cut_figure(rows: list[dict], measured: dict | None, path: Path, model: str) -> None:
    """SplitFrozen's device-FLOP saving against FedLoRA and SplitLoRA for every cut; the paper's figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    cuts = [r["cut"] for r in rows]
    ax.plot(cuts, [100 * r["saving_vs_fedlora"] for r in rows], "o-", label="vs FedLoRA (cost model)")
    ax.plot(cuts, [100 * r["saving_vs_splitlora"] for r in rows], "s-", label="vs SplitLoRA, same cut (cost model)")
    if measured:
        ax.plot([measured["cut"]], [100 * measured["saving_vs_fedlora"]], "k*", ms=11,
                label=f"vs FedLoRA, FlopCounterMode ({100 * measured['saving_vs_fedlora']:.1f}%)")
    ax.axhline(PAPER["device_compute_saving"], color="gray", ls="--", lw=1, label=f"paper: {pct('device_compute_saving')}")
    ax.set_xlabel("cut k (blocks on the device)")
    ax.set_ylabel("device compute saved (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{model}: SplitFrozen's device compute saving against the cut", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bandwidth_figure(rows: list[dict], baselines: tuple[str, ...], xlabels: list[str], path: Path) -> None:
    """SplitFrozen's simulated time saving against each baseline as every link is scaled; the paper's figure and 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    xs = [r["factor"] for r in rows]
    for b in baselines:
        ax.plot(xs, [100 * r[f"saving_vs_{b}"] for r in rows], "o-", ms=3, label=f"vs {b}")
    ax.axhline(PAPER["time_saving"], color="gray", ls="--", lw=1, label=f"paper: {pct('time_saving')}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    low = min(100 * r[f"saving_vs_{b}"] for r in rows for b in baselines)
    if low < -100:  # keep the interesting band readable; say what is cut off
        ax.set_ylim(-100, 100)
        ax.text(0.02, 0.04, f"clipped at -100% (lowest: {low:.0f}%)", transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("every device link's bandwidth x factor (profiles/edge.yaml = 1)")
    ax.set_ylabel("training time saved (%)")
    ax.set_title("SplitFrozen's simulated time saving against link bandwidth", fontsize=10)
    ticks = [r["factor"] for r in rows][:: max(1, len(rows) // 6)]
    ax.set_xticks(ticks, [f"{t:.3g}x\n{lab}" for t, lab in zip(ticks, xlabels[:: max(1, len(rows) // 6)], strict=True)], fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def time_figure(tg: dict, fleets: dict[str, str], methods: tuple[str, ...], path: Path) -> bool:
    """Measured training time per method on each emulated fleet: a bar per method (mean over repeats, error
    bar = sample sd), each repeat as a dot, and the simulator's prediction on the same fleet as a black tick.

    ``tg``: (fleet name, method) -> repeat -> figures (``measured_s``, ``predicted_s``). False when no fleet ran.
    """
    shown = [f for f in fleets if any(tg.get((f, m)) for m in methods)]
    if not shown:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 3.6), squeeze=False)
    for ax, fleet in zip(axes[0], shown, strict=True):
        for i, meth in enumerate(methods):
            runs = list(tg.get((fleet, meth), {}).values())
            if not runs:
                continue
            meas = [r["measured_s"] for r in runs]
            m, sd = mean_sd(meas)
            ax.bar(i, m, 0.6, yerr=sd, capsize=3, color=f"C{i}", alpha=0.75)
            ax.plot([i] * len(meas), meas, "k.", ms=4)
            pred = sum(r["predicted_s"] for r in runs) / len(runs)
            ax.plot([i - 0.3, i + 0.3], [pred, pred], "k-", lw=2)
        ax.set_xticks(range(len(methods)), methods, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{fleet} ({fleets[fleet]})", fontsize=9)
        ax.set_ylabel("training time (s)")
    fig.suptitle("measured (bars: mean ± sd over repeats; dots: each repeat) and predicted by the simulator on the "
                 "same fleet (black ticks)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
