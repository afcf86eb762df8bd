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

A checkpoint saves what the cache holds (:meth:`ActivationCache.checkpoint`): each device's micro-batches are appended
to its own file under ``OUT/activation-cache`` (each once: a micro-batch is saved at the first checkpoint after it
came), and the checkpoint records how many of each are its own, what was replayed so far, who departed, and the
replays of the epoch it was taken in. ``--resume`` reads them back (:meth:`ActivationCache.restore`), so a run
stopped in or after the epoch that fills the cache goes on replaying what the interrupted run received, with the
same replays left (issue 21): the devices do not send again what the servers already hold.

Micro-batches are kept whole (their composition is the first epoch's; later epochs replay them in a
fresh order, see ``trainer.methods.splitfrozen``): a sample's activations depend on its batch's
padding for left-padded decoders, whose positions count from the first column, so re-batching
samples would train on inputs no device computes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

#: The tensors of a cached micro-batch, in the order they are stored.
FIELDS = ("hidden", "attention_mask", "labels")

SAVED = "activation-cache"
"""The folder under a server's output where checkpoints save its cache (one file per device, appended to)."""

_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                      torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool)}
_LEN = struct.Struct("<Q")  # a saved micro-batch: its header's length, the header (JSON), then its tensors' bytes


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
        self.saved: dict[str, tuple[int, int]] = {}  # device -> (micro-batches, bytes) in its file under SAVED
        self.replaying: tuple[int, dict[str, int]] | None = None  # (epoch, its replays): set by the method
        self.restored: tuple[int, dict[str, int]] | None = None  # a checkpoint's replaying, until that epoch resumes
        self.by_rows = False  # several servers, handovers: a server weighs its replays' samples in the averages
        self._refill: int | None = None  # the epoch whose part a checkpoint restored (:meth:`fill` keeps it)

    def fill(self, epoch: int, resumed: bool) -> None:
        """Epoch ``epoch`` comes from the wire: forget every entry and keep what arrives; it fills the cache unless
        the epoch was ``resumed`` mid-way (then the next epoch is sent whole again)."""
        if self._refill == epoch:  # its part up to the checkpoint is restored: the rest comes now
            self._refill, self.filled_in = None, epoch
            return
        for device in list(self._entries):
            self.clear(device)
        self.filled_in = None if resumed else epoch
        self.saved = {}  # the next checkpoint saves this fill afresh

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

    def resumed_replays(self, epoch: int) -> dict[str, int] | None:
        """The replays of ``epoch`` as they were when the checkpoint this run resumed from was taken in it (so the
        epoch goes on with the same devices: those departed before it opened replay nothing, as they did not), once;
        None: the epoch opens afresh."""
        got, self.restored = self.restored, None
        return got[1] if got is not None and got[0] == epoch else None

    def checkpoint(self, out: str | Path) -> dict:
        """Save what is not saved yet under ``out/SAVED`` (appended, each micro-batch once) and return the state a
        checkpoint records (:meth:`restore` reads both back)."""
        folder = Path(out) / SAVED
        if not self.saved:
            shutil.rmtree(folder, ignore_errors=True)  # another fill's (or nothing): this one starts afresh
        folder.mkdir(parents=True, exist_ok=True)
        for device in self._entries:
            k, size = self.saved.get(device, (0, 0))
            if k >= self.count(device):
                continue
            with open(folder / _name(device), "r+b" if size else "wb") as f:
                f.truncate(size)  # anything after the last checkpoint's part is not its
                f.seek(size)
                for j in range(k, self.count(device)):
                    size += _write(f, self._read(device, j), self.digests[device][j])
                f.flush()
                os.fsync(f.fileno())
            self.saved[device] = (self.count(device), size)
        return {"filled_in": self.filled_in, "saved": {n: list(v) for n, v in self.saved.items() if v[0]},
                "held": {n: self.count(n) for n in self._entries}, "left": sorted(self.left),
                "reads": self.reads, "replaying": None if self.replaying is None else list(self.replaying),
                "by_rows": self.by_rows}

    def restore(self, out: str | Path, state: dict, epoch: int) -> None:
        """Take back what a checkpoint of ``epoch`` recorded (:meth:`checkpoint`): the micro-batches each device had
        here then (from ``out/SAVED``; beyond its memory they go to file as :meth:`put` puts them), who departed,
        what was replayed, and that epoch's replays when it was taken in it.

        Raises:
            ValueError: a saved file is missing or shorter than the checkpoint says (one line)."""
        folder = Path(out) / SAVED
        for device, n in state["held"].items():
            k, size = state["saved"].get(device, (0, 0))
            if n != k:
                raise ValueError(f"the checkpoint holds {n} micro-batches of {device} but saved {k}")
            path = folder / _name(device)
            if n and (not path.is_file() or path.stat().st_size < size):
                raise ValueError(f"{path} is missing or shorter than the checkpoint's {size} bytes")
            with open(path, "rb") if n else open(os.devnull, "rb") as f:
                for _ in range(n):
                    tensors, want = _read_saved(f)
                    self.put(device, tensors)
                    if self.digests[device][-1] != want:
                        raise ValueError(f"{path}: a micro-batch of {device} is not what was saved (digest)")
            if n:
                self.saved[device] = (k, size)
        self.filled_in, self.left = state["filled_in"], set(state["left"])
        self.reads, self.by_rows = {n: list(v) for n, v in state["reads"].items()}, bool(state["by_rows"])
        self.restored = None if state["replaying"] is None else (int(state["replaying"][0]), state["replaying"][1])
        self._refill = epoch if self.filled_in == epoch else None  # stopped in the epoch that fills it

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
        return Path(self._tmp.name) / _name(device)

    def close(self) -> None:
        """Drop every entry and delete the spill folder."""
        self._entries.clear()
        self._maps.clear()
        self.in_memory_bytes = 0
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _name(device: str) -> str:
    """A device's file name (any device name gives a safe one)."""
    return f"{len(device)}-{device.encode().hex()}.bin"


def _write(f, tensors: dict[str, torch.Tensor], dig: str) -> int:
    """Append one micro-batch to a saved file: header length, header (its digest, each field's dtype and shape),
    then each field's bytes; return the bytes written."""
    parts = [tensors[k].detach().contiguous() for k in FIELDS]
    head = json.dumps({"digest": dig, "fields": [[str(t.dtype).removeprefix("torch."), list(t.shape)]
                                                 for t in parts]}).encode()
    f.write(_LEN.pack(len(head)) + head)
    for t in parts:
        f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return _LEN.size + len(head) + sum(t.nbytes for t in parts)


def _read_saved(f) -> tuple[dict[str, torch.Tensor], str]:
    """The next micro-batch of a saved file and the digest saved with it."""
    (n,) = _LEN.unpack(f.read(_LEN.size))
    head = json.loads(f.read(n))
    out = {}
    for k, (dtype, shape) in zip(FIELDS, head["fields"], strict=True):
        dt = _DTYPES[dtype]
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dt).element_size()
        raw = torch.frombuffer(bytearray(f.read(size)), dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
        out[k] = raw.view(dt).reshape(shape)
    return out, head["digest"]
