"""Seeded non-IID partitions of a labelled dataset over devices: iid, dirichlet:ALPHA, label-skew:C.

``dirichlet:ALPHA`` is the per-class split common in federated-learning work (Hsu et al. 2019,
NIID-Bench): each class's samples are divided among the devices by Dir(alpha) proportions, so the
union of the devices' data has the training set's label mix (with per-device budgets: exactly, up
to rounding, see :func:`dirichlet_counts`). :func:`missing_classes` names classes no device holds.
"""

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


def _largest_remainder(raw: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total``, each the floor of ``raw`` or one more (largest fractions first)."""
    out = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - out), kind="stable")[: total - int(out.sum())]:
        out[i] += 1
    return out


def _fit_marginals(target: np.ndarray, rows: np.ndarray, cols: np.ndarray, iters: int = 2000) -> np.ndarray:
    """Iterative proportional fitting: rescale rows and columns of ``target`` (D, K) to the given sums.

    The result is the matrix closest to ``target`` in KL divergence with these margins (it keeps
    every cross-ratio of ``target``: which device favours which class survives, only scales change).
    """
    x = target + 1e-12 * max(float(cols.sum()), 1.0)  # strictly positive: the fit exists for any margins
    for _ in range(iters):
        x *= np.divide(rows, x.sum(1), out=np.zeros(len(rows)), where=rows > 0)[:, None]
        x *= np.divide(cols, x.sum(0), out=np.zeros(len(cols)), where=cols > 0)[None, :]
        if np.abs(x.sum(1) - rows).max() <= 1e-9 * max(float(rows.max(initial=0)), 1.0):
            break
    return x


def _round_matrix(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Integer (D, K) counts with exactly the given row and column sums, each cell near ``x``.

    Floors first, then one more sample to the cells with the largest fractions while their row and
    column still lack samples, then whatever is left by the north-west corner rule (always completes,
    since the missing row and column totals are equal).
    """
    out = np.floor(x).astype(np.int64)
    need_r, need_c = rows - out.sum(1), cols - out.sum(0)
    frac = (x - out).ravel()
    for cell in np.argsort(-frac, kind="stable"):
        d, k = divmod(int(cell), x.shape[1])
        if need_r[d] > 0 and need_c[k] > 0:
            out[d, k] += 1
            need_r[d] -= 1
            need_c[k] -= 1
    for d in range(x.shape[0]):
        for k in range(x.shape[1]):
            take = min(need_r[d], need_c[k])
            if take > 0:
                out[d, k] += take
                need_r[d] -= take
                need_c[k] -= take
    return out


def dirichlet_counts(class_sizes: Sequence[int], n_devices: int, alpha: float, rng: np.random.Generator,
                     sizes: Sequence[int] | None = None) -> np.ndarray:
    """Samples of each class per device for ``dirichlet:ALPHA``: a (n_devices, K) integer matrix.

    Per-class split (Hsu et al. 2019; Li et al., NIID-Bench 2022): for every class k, proportions
    q_k ~ Dir(alpha, ..., alpha) over the devices divide that class's samples among them.

    * Without ``sizes``: all samples are used; class k's samples go to the devices in proportions
      q_k (largest remainder), so device totals follow the draw (quantity skew comes with label skew).
    * With ``sizes`` (per-device budgets): the class totals are the training set's label mix scaled
      to ``sum(sizes)`` (a stratified subsample, largest remainder), and the Dirichlet matrix is
      fitted to both margins by iterative proportional fitting, then rounded: every device gets
      exactly its budget, every class exactly its share, and the skew is the draw's.

    Args:
        class_sizes: samples available per class (K,).
        n_devices: number of devices D.
        alpha: Dirichlet concentration (> 0; small: each class on few devices).
        rng: the seeded generator (one ``dirichlet`` draw of shape (K, D)).
        sizes: optional budget per device (D,), summing to at most ``sum(class_sizes)``.

    Returns:
        (D, K) int64 counts; column k sums to the class total, row d to ``sizes[d]`` when given.

    Example:
        >>> c = dirichlet_counts([6, 4], 2, 0.5, np.random.default_rng(0), sizes=[3, 2])
        >>> c.sum(1).tolist(), c.sum(0).tolist()
        ([3, 2], [3, 2])
    """
    avail = np.asarray(class_sizes, dtype=np.int64)
    n = int(avail.sum())
    props = rng.dirichlet(np.full(n_devices, alpha), size=len(avail))  # (K, D): class k over devices
    bad = ~np.all(np.isfinite(props), axis=1)  # tiny alpha can underflow: the class goes to one random device
    props[bad] = np.eye(n_devices)[rng.integers(n_devices, size=int(bad.sum()))]
    if sizes is None:
        return np.stack([_largest_remainder(props[k] * avail[k], int(avail[k])) for k in range(len(avail))], 1)
    rows = np.asarray(sizes, dtype=np.int64)
    total = int(rows.sum())
    cols = _largest_remainder(avail * total / max(n, 1), total)  # the global label mix, scaled to the budget
    fitted = _fit_marginals(props.T * cols[None, :], rows.astype(float), cols.astype(float))
    return _round_matrix(fitted, rows, cols)


def _dirichlet(labels: np.ndarray, n_devices: int, sizes: list[int] | None, alpha: float, rng) -> list[np.ndarray]:
    """Sample indices per device from :func:`dirichlet_counts` (each class's shuffled pool cut in device order)."""
    classes, pools = _class_pools(labels, rng)
    counts = dirichlet_counts([len(p) for p in pools], n_devices, alpha, rng, sizes)  # (D, K)
    starts = np.zeros(len(classes), dtype=np.int64)
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
        spec: "iid", "dirichlet:ALPHA" (the per-class split of :func:`dirichlet_counts`: each class's
            samples divided among devices by Dir(alpha) proportions, so the partition keeps the
            training set's label mix) or "label-skew:C" (label-skew:1: one class per device, classes
            spread over devices round-robin).
        seed: random seed; the same seed gives the same partition.
        sizes: optional samples per device (e.g. from the scenario profile); every kind gives each
            device exactly this many. Default: all samples; iid in equal counts, dirichlet with
            device totals from the draw, label-skew with each class split equally among its holders.

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
        parts = _dirichlet(labels, n_devices, None if sizes is None else full, parsed.alpha, rng)
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



def missing_classes(parts: Sequence[np.ndarray], labels: np.ndarray, n_classes: int) -> list[int]:
    """Class ids in ``0..n_classes-1`` that no device holds: a model trained on these parts never sees them.

    Example:
        >>> missing_classes([np.array([0]), np.array([1])], np.array([1, 1, 0]), 2)
        [0]
    """
    labels = np.asarray(labels)
    held = set() if not parts else set(labels[np.concatenate(list(parts)).astype(np.int64)].tolist())
    return [c for c in range(n_classes) if c not in held]
