"""The SplitFrozen server's activation cache: what the uplink carried in one epoch, replayed in later ones.

SplitFrozen's device prefix is frozen, forward-only and runs without dropout, so a micro-batch's
activations are the same every epoch. With ``training.cache_activations`` the server keeps every
micro-batch it received (the decoded ``hidden``, ``attention_mask`` and ``labels``) and later epochs
train on them with no device compute and no uplink. Entries live in memory up to ``memory`` bytes;
the rest are appended to one file per device in a temporary folder under the run's output and read
back through a memory map (``numpy.memmap``), so the cache is bounded by disk, not RAM.

The server that *received* a micro-batch keeps it and replays it: a device that hands over during the epoch
the cache is filled in leaves what it sent to the old server cached there and sends the rest to the new one, and
each later epoch every server replays its own cache (:meth:`ActivationCache.replays`), whatever server holds the
device by then (it sends nothing more); the simulator's pools do the same (``sfsim.engine.cacheparts``).

Micro-batches are kept whole (their composition is the first epoch's; later epochs replay them in a
fresh order, see ``trainer.methods.splitfrozen``): a sample's activations depend on its batch's
padding for left-padded decoders, whose positions count from the first column, so re-batching
samples would train on inputs no device computes.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch

#: The tensors of a cached micro-batch, in the order they are stored.
FIELDS = ("hidden", "attention_mask", "labels")


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """A short hash of a micro-batch's :data:`FIELDS` (dtype, shape and bytes): equal only when bit for bit equal."""
    h = hashlib.blake2b(digest_size=8)
    for k in FIELDS:
        t = tensors[k].detach().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ActivationCache:
    """Micro-batches per device, in memory up to ``memory`` bytes, then in memory-mapped files.

    Args:
        memory: bytes of tensors kept in memory (>= 0).
        folder: where the spill folder is created (the run's output folder).
    """

    def __init__(self, memory: float, folder: str | Path = "."):
        if not memory >= 0:
            raise ValueError(f"cache memory must be >= 0 bytes, got {memory}")
        self.memory, self.folder = float(memory), Path(folder)
        self.in_memory_bytes = 0
        self.file_bytes = 0
        self._entries: dict[str, list] = {}  # device -> [dict of tensors | list of (offset, dtype, shape)]
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._maps: dict[str, np.memmap] = {}
        self.left: set[str] = set()  # devices gone for good (``leave``): their cache is not read
        self.filled_in: int | None = None  # the epoch sent here from its start that fills the cache (:meth:`fill`)
        self.digests: dict[str, list[str]] = {}  # device -> :func:`digest` of each micro-batch put, in order
        self.reads: dict[str, list[str]] = {}  # device -> :func:`digest` of each micro-batch read back (replayed)

    def fill(self, epoch: int, resumed: bool) -> None:
        """Epoch ``epoch`` comes from the wire: forget every entry and keep what arrives; it fills the cache unless
        the epoch was ``resumed`` mid-way (then the next epoch is sent whole again)."""
        for device in list(self._entries):
            self.clear(device)
        self.filled_in = None if resumed else epoch

    def replays(self, epoch: int, lost=(), order=()) -> dict[str, int] | None:
        """Device -> micro-batches this server replays in ``epoch``: every device it cached in an earlier epoch
        sent here from its start (the part a device sent here before or after a handover, all of it when it
        stayed), except those gone for good (``leave``) or ``lost``; devices in ``order`` first, in that order.
        None: the cache holds no whole epoch yet, so this one comes from the wire (:meth:`fill`)."""
        if self.filled_in is None or self.filled_in >= epoch:
            return None
        names = [n for n in order if n in self._entries] + [n for n in self._entries if n not in order]
        return {n: self.count(n) for n in dict.fromkeys(names) if n not in self.left and n not in lost and self.count(n)}

    def rows(self, device: str) -> int:
        """Samples (label rows) of ``device``'s micro-batches held."""
        k = FIELDS.index("labels")
        return sum(int(e["labels"].shape[0]) if isinstance(e, dict) else int(e[k][2][0])
                   for e in self._entries.get(device, ()))

    def rows_at(self, device: str, j: int) -> int:
        """Samples (label rows) of ``device``'s micro-batch ``j`` held."""
        e = self._entries[device][j]
        return int(e["labels"].shape[0]) if isinstance(e, dict) else int(e[FIELDS.index("labels")][2][0])

    def stop(self, device: str) -> None:
        """``device`` departed (its ``gone``, ``trainer.transport.departure``): no later epoch replays it; what it held
        stays listed in :meth:`report`."""
        self.left.add(device)

    def leave(self, device: str) -> None:
        """``device`` left for good while sending: its micro-batches are forgotten and no later epoch replays it (the
        others' caches still serve theirs, as the simulator's pool replays every device but those gone)."""
        self.left.add(device)
        self.clear(device)

    def count(self, device: str) -> int:
        """Micro-batches of ``device`` held."""
        return len(self._entries.get(device, ()))

    def clear(self, device: str) -> None:
        """Forget ``device``'s micro-batches (its file's space is not reused)."""
        for e in self._entries.pop(device, []):
            if isinstance(e, dict):
                self.in_memory_bytes -= sum(t.nbytes for t in e.values())
        self._maps.pop(device, None)
        self.digests.pop(device, None)

    def put(self, device: str, tensors: dict[str, torch.Tensor]) -> None:
        """Keep one micro-batch of ``device`` (its :data:`FIELDS`), in memory while there is room, else on file."""
        parts = {k: tensors[k].detach().contiguous() for k in FIELDS}
        nbytes = sum(t.nbytes for t in parts.values())
        self.digests.setdefault(device, []).append(digest(parts))
        if self.in_memory_bytes + nbytes <= self.memory:
            self._entries.setdefault(device, []).append(parts)  # received tensors: nobody else writes to them
            self.in_memory_bytes += nbytes
            return
        path = self._path(device)
        offset = path.stat().st_size if path.exists() else 0
        meta = []
        with open(path, "ab") as f:
            for k in FIELDS:
                t = parts[k]
                f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                meta.append((offset, t.dtype, tuple(t.shape)))
                offset += t.nbytes
        self.file_bytes += nbytes
        self._maps.pop(device, None)  # the file grew: map it again on the next read
        self._entries.setdefault(device, []).append(meta)

    def get(self, device: str, j: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``j`` of ``device`` as it was put (bit for bit; its digest goes to :attr:`reads`)."""
        out = self._read(device, j)
        self.reads.setdefault(device, []).append(digest(out))
        return out

    def report(self) -> dict:
        """What the cache held and what was read back (``metrics.json`` ``activation_cache``): per device the
        digests of its micro-batches held and of those replayed (each epoch's replay reads every one once), and the
        bytes kept in memory and on file."""
        names = list(dict.fromkeys([*self.digests, *self.reads]))
        return {"devices": {n: {"held": self.digests.get(n, []), "replayed": self.reads.get(n, [])} for n in names},
                "in_memory_bytes": int(self.in_memory_bytes), "file_bytes": int(self.file_bytes)}

    def _read(self, device: str, j: int) -> dict[str, torch.Tensor]:
        e = self._entries[device][j]
        if isinstance(e, dict):
            return dict(e)
        if device not in self._maps:
            self._maps[device] = np.memmap(self._path(device), dtype=np.uint8, mode="r")
        mm, out = self._maps[device], {}
        for k, (offset, dtype, shape) in zip(FIELDS, e, strict=True):
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = torch.from_numpy(np.array(mm[offset:offset + n]))  # a copy: (n,) uint8
            out[k] = raw.view(dtype).reshape(shape)
        return out

    def _path(self, device: str) -> Path:
        if self._tmp is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="activation-cache-", dir=self.folder)
        return Path(self._tmp.name) / f"{len(device)}-{device.encode().hex()}.bin"  # any device name is a safe file name

    def close(self) -> None:
        """Drop every entry and delete the spill folder."""
        self._entries.clear()
        self._maps.clear()
        self.in_memory_bytes = 0
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
