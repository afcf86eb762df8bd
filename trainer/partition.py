"""Seeded non-IID partitions of a labelled dataset over devices: iid, dirichlet:ALPHA, label-skew:C."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sfsim.errors import SfsimError

_FORMS = "iid, dirichlet:ALPHA (ALPHA > 0) or label-skew:C (C >= 1 classes per device)"


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition spec: kind "iid", "dirichlet" (with alpha) or "label-skew" (with classes)."""

    kind: str
    alpha: float | None = None
    classes: int | None = None

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "label-skew":
            return f"label-skew:{self.classes}"
        return "iid"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse "iid", "dirichlet:ALPHA" or "label-skew:C"; anything else is a one-line SfsimError.

    Example:
        >>> parse_partition("dirichlet:0.5")
        PartitionSpec(kind='dirichlet', alpha=0.5, classes=None)
    """
    text = str(spec).strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "iid" and not arg:
        return PartitionSpec("iid")
    try:
        if kind == "dirichlet":
            alpha = float(arg)
            if alpha > 0 and np.isfinite(alpha):
                return PartitionSpec("dirichlet", alpha=alpha)
        elif kind == "label-skew":
            classes = int(arg)
            if classes >= 1:
                return PartitionSpec("label-skew", classes=classes)
    except ValueError:
        pass
    raise SfsimError(f"partition {spec!r} is not valid: use {_FORMS}")


def _check_sizes(n: int, n_devices: int, sizes: Sequence[int] | None) -> list[int]:
    """Per-device sample counts: the given ones (validated) or an equal split of all ``n`` samples."""
    if n_devices < 1:
        raise SfsimError(f"partition needs at least one device (got {n_devices})")
    if sizes is None:
        return [len(a) for a in np.array_split(np.arange(n), n_devices)]
    sizes = [int(s) for s in sizes]
    if len(sizes) != n_devices or any(s < 0 for s in sizes):
        raise SfsimError(f"partition sizes {sizes} must be {n_devices} counts >= 0, one per device")
    if sum(sizes) > n:
        raise SfsimError(f"partition sizes ask for {sum(sizes)} samples but the dataset has {n}: "
                         "lower the per-device samples or use more training data")
    return sizes


def _class_pools(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted class ids and, for each, its sample indices in a seeded random order."""
    classes = np.unique(labels)
    return classes, [rng.permutation(np.flatnonzero(labels == c)) for c in classes]


def _iid(n: int, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive chunks of one random permutation."""
    perm = rng.permutation(n)
    ends = np.cumsum(sizes)
    return [perm[e - s:e] for s, e in zip(sizes, ends, strict=True)]


def _draw_counts(rng: np.random.Generator, n: int, p: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Class counts summing to ``n``, drawn from proportions ``p`` but never above ``room`` per class."""
    counts = np.zeros(len(p), dtype=np.int64)
    while counts.sum() < n:
        open_ = room - counts > 0
        q = np.where(open_, p, 0.0)
        q = q / q.sum() if q.sum() > 0 else open_ / open_.sum()  # a drained favourite: spread over the rest
        counts = np.minimum(counts + rng.multinomial(n - counts.sum(), q), room)
    return counts


def _dirichlet(labels: np.ndarray, sizes: list[int], alpha: float, rng) -> list[np.ndarray]:
    """Each device draws class proportions from Dir(alpha) and takes that mix of samples (Hsu et al. 2019).

    Devices take their samples in about 20 interleaved rounds, so when a popular class runs out every
    device feels it alike (not just the last one served).
    """
    classes, pools = _class_pools(labels, rng)
    K = len(classes)
    props = rng.dirichlet(np.full(K, alpha), size=len(sizes))  # (n_devices, K)
    bad = ~np.all(np.isfinite(props), axis=1)  # tiny alpha can underflow: fall back to one random class
    props[bad] = np.eye(K)[rng.integers(K, size=int(bad.sum()))]
    counts = np.zeros((len(sizes), K), dtype=np.int64)
    room = np.array([len(p) for p in pools])
    need = np.array(sizes, dtype=np.int64)
    steps = [max(1, -(-s // 20)) for s in sizes]  # ceil(size / 20) samples per round
    while need.sum() > 0:
        for d in range(len(sizes)):
            step = int(min(need[d], steps[d]))
            if step:
                c = _draw_counts(rng, step, props[d], room)
                counts[d] += c
                room -= c
                need[d] -= step
    starts = np.zeros(K, dtype=np.int64)
    parts = []
    for row in counts:
        parts.append(np.concatenate([pools[k][starts[k]:starts[k] + c] for k, c in enumerate(row)]))
        starts += row
    return parts


def _skew_classes(n_devices: int, n_classes: int, per_device: int) -> list[list[int]]:
    """Class positions per device, round-robin: device d holds (d*C + j) mod K for j < C."""
    return [[(d * per_device + j) % n_classes for j in range(per_device)] for d in range(n_devices)]


def _label_skew(labels: np.ndarray, n_devices: int, per_device: int, sizes: list[int] | None, rng):
    """Each device holds only ``per_device`` classes; a class is shared equally by the devices holding it."""
    classes, pools = _class_pools(labels, rng)
    if per_device > len(classes):
        raise SfsimError(f"partition label-skew:{per_device} asks for more classes per device than the "
                         f"{len(classes)} in the data: use label-skew:1..{len(classes)}")
    held = _skew_classes(n_devices, len(classes), per_device)
    if sizes is None:
        holders = {k: [d for d in range(n_devices) if k in held[d]] for k in range(len(classes))}
        chunks = {k: np.array_split(pools[k], len(h)) for k, h in holders.items() if h}
        return [np.concatenate([chunks[k][holders[k].index(d)] for k in held[d]]) for d in range(n_devices)]
    taken = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for d, n_d in enumerate(sizes):
        want = [n_d // per_device + (j < n_d % per_device) for j in range(per_device)]
        pieces = []
        for k, w in zip(held[d], want, strict=True):
            if taken[k] + w > len(pools[k]):
                raise SfsimError(f"partition label-skew:{per_device}: device {d} needs {w} samples of class "
                                 f"{classes[k]} but only {len(pools[k]) - taken[k]} are left: lower the sizes")
            pieces.append(pools[k][taken[k]:taken[k] + w])
            taken[k] += w
        parts.append(np.concatenate(pieces))
    return parts


def partition(labels: np.ndarray, n_devices: int, spec: str, *, seed: int,
              sizes: Sequence[int] | None = None) -> list[np.ndarray]:
    """Split sample indices over devices: disjoint, sorted index arrays, the same for the same seed.

    Args:
        labels: (N,) integer class per sample.
        n_devices: number of devices.
        spec: "iid", "dirichlet:ALPHA" or "label-skew:C" (label-skew:1: one class per device,
            classes spread over devices round-robin).
        seed: random seed; the same seed gives the same partition.
        sizes: optional samples per device (e.g. from the scenario profile); default: all samples,
            equal counts (label-skew without sizes: each class split equally among its holders).

    Returns:
        One int64 index array per device.

    Example:
        >>> [p.tolist() for p in partition(np.array([0, 0, 1, 1]), 2, "label-skew:1", seed=0)]
        [[0, 1], [2, 3]]
    """
    parsed = parse_partition(spec)
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise SfsimError("partition needs a 1-D array of integer class labels (generation tasks: use iid)")
    rng = np.random.default_rng(seed)
    n = len(labels)
    full = _check_sizes(n, n_devices, sizes)
    if parsed.kind == "iid":
        parts = _iid(n, full, rng)
    elif parsed.kind == "dirichlet":
        parts = _dirichlet(labels, full, parsed.alpha, rng)
    else:
        parts = _label_skew(labels, n_devices, parsed.classes, None if sizes is None else full, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def partition_table(parts: Sequence[np.ndarray], labels: np.ndarray,
                    device_names: Sequence[str] | None = None) -> str:
    """A printable table of sample counts per device (rows) and class (columns), with totals."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    names = list(device_names) if device_names is not None else [f"device{i}" for i in range(len(parts))]
    if len(names) != len(parts):
        raise SfsimError(f"partition_table got {len(names)} device names for {len(parts)} parts")
    rows = [[str(name)] + [int(np.sum(labels[p] == c)) for c in classes] + [len(p)]
            for name, p in zip(names, parts, strict=True)]
    rows.append(["total"] + [sum(r[i + 1] for r in rows) for i in range(len(classes))] + [sum(len(p) for p in parts)])
    header = ["device"] + [f"class {c}" for c in classes] + ["total"]
    cells = [header] + [[str(x) for x in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    return "\n".join(lines)
