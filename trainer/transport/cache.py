"""The SplitFrozen server's activation cache: what the uplink carried in one epoch, replayed in later ones.

SplitFrozen's device prefix is frozen, forward-only and runs without dropout, so a micro-batch's
activations are the same every epoch. With ``training.cache_activations`` the server keeps every
micro-batch it received (the decoded ``hidden``, ``attention_mask`` and ``labels``) and later epochs
train on them with no device compute and no uplink. Entries live in memory up to ``memory`` bytes;
the rest are appended to one file per device and read back through a memory map (``numpy.memmap``),
so the cache is bounded by disk, not RAM.

The server that *received* a micro-batch keeps it and replays it: a device that hands over during the epoch
the cache is filled in leaves what it sent to the old server cached there and sends the rest to the new one, and
each later epoch every server replays its own cache (:meth:`ActivationCache.replays`), whatever server holds the
device by then (it sends nothing more); the simulator's pools do the same (``sfsim.engine.cacheparts``).

Each device's file is an append-only log of its micro-batches in the order they came (each a record: its digest,
dtypes and shapes, then its bytes), and it is the one copy on disk: a checkpoint (:meth:`ActivationCache.checkpoint`)
appends what is only in memory, fsyncs the files and records per device how many records and bytes are its own and
their digests (a record written after it is not its), what was replayed so far, who departed, and the replays of the
epoch it was taken in. The files live under ``OUT/activation-cache`` (a server's checkpoint folder; until its first
checkpoint in a temporary folder beside it, renamed there then), named by the cache's fill (a new fill writes new
files; the last checkpoint's stay until a later one no longer needs them). ``--resume`` reads them back (:meth:`ActivationCache.restore`), so a run
stopped in or after the epoch that fills the cache goes on replaying what the interrupted run received, with the
same replays left (issue 21): the devices do not send again what the servers already hold.

Micro-batches are kept whole (their composition is the first epoch's; later epochs replay them in a
fresh order, see ``trainer.methods.splitfrozen``): a sample's activations depend on its batch's
padding for left-padded decoders, whose positions count from the first column, so re-batching
samples would train on inputs no device computes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainer.transport import cachefile
from trainer.transport.cachefile import FIELDS

SAVED = "activation-cache"
"""The folder under a server's output where the cache's files live once a checkpoint counts on them (one per device)."""


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
        folder: where the spill folder is created (the run's output folder) until a checkpoint places the files in
            its own folder (:meth:`checkpoint`).
    """

    def __init__(self, memory: float, folder: str | Path = "."):
        if not memory >= 0:
            raise ValueError(f"cache memory must be >= 0 bytes, got {memory}")
        self.memory, self.folder = float(memory), Path(folder)
        self.in_memory_bytes = 0
        self.file_bytes = 0
        self._entries: dict[str, list] = {}  # device -> [dict of tensors | cachefile.Fields], in the order put
        self._tmp: tempfile.TemporaryDirectory | None = None  # the files' folder until a checkpoint places them
        self._dir: Path | None = None  # the files' folder once placed (a checkpoint folder's SAVED)
        self._maps: dict[str, np.memmap] = {}
        self._logged: dict[str, tuple[int, int]] = {}  # device -> (records, bytes) on its file: its first micro-batches
        self._dirty: set[str] = set()  # devices whose file grew since the last checkpoint (it fsyncs them)
        self._gen = 0  # the fill the files are of (their names' prefix): a new fill writes new files
        self._kept: set[str] = set()  # the files the last checkpoint (or the one restored) counts on
        self.left: set[str] = set()  # devices gone for good (``leave``): their cache is not read
        self.filled_in: int | None = None  # the epoch sent here from its start that fills the cache (:meth:`fill`)
        self.digests: dict[str, list[str]] = {}  # device -> :func:`digest` of each micro-batch put, in order
        self.reads: dict[str, list[str]] = {}  # device -> :func:`digest` of each micro-batch read back (replayed)
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
        self._gen, self._logged, self._dirty = self._gen + 1, {}, set()  # new files: the last checkpoint's stay

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
        """Forget ``device``'s micro-batches (its file stays while a checkpoint counts on it; a device is cleared only
        by a new fill, which writes new files, or for good, :meth:`leave`)."""
        for e in self._entries.pop(device, []):
            if isinstance(e, dict):
                self.in_memory_bytes -= sum(t.nbytes for t in e.values())
        self._maps.pop(device, None)
        self.digests.pop(device, None)
        self._logged.pop(device, None)
        self._dirty.discard(device)

    def put(self, device: str, tensors: dict[str, torch.Tensor]) -> None:
        """Keep one micro-batch of ``device`` (its :data:`FIELDS`), in memory while there is room, else on file (after
        those of its micro-batches only in memory yet: its file holds its first ones, in order)."""
        parts = {k: tensors[k].detach().contiguous() for k in FIELDS}
        nbytes = sum(t.nbytes for t in parts.values())
        self.digests.setdefault(device, []).append(digest(parts))
        entries = self._entries.setdefault(device, [])
        entries.append(parts)  # received tensors: nobody else writes to them
        if self.in_memory_bytes + nbytes <= self.memory:
            self.in_memory_bytes += nbytes
            return
        entries[-1] = self._log(device)[len(entries) - 1]
        self.file_bytes += nbytes

    def _log(self, device: str) -> dict[int, cachefile.Fields]:
        """Append to ``device``'s file each of its micro-batches not on it yet, in order; return where each one's
        fields are, by index."""
        done, size = self._logged.get(device, (0, 0))
        n, where = self.count(device), {}
        if done >= n:
            return where
        with open(self._path(device), "r+b" if done else "wb") as f:  # a new file: nothing of another run's in it
            f.seek(size)
            for j in range(done, n):
                where[j], wrote = cachefile.write(f, size, self._read(device, j), self.digests[device][j])
                size += wrote
            f.truncate()
        self._logged[device] = (n, size)
        self._dirty.add(device)
        self._maps.pop(device, None)  # the file grew: map it again on the next read
        return where

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
        """Make the files under ``out/SAVED`` hold every micro-batch held (appending those only in memory), fsync them
        and return the state a checkpoint records: per device its records and bytes and their digests (what
        :meth:`restore` takes back; a file may run past them), who departed, what was replayed and this epoch's
        replays. A file neither this checkpoint nor the last one counts on is deleted (the last one's once this one
        is :meth:`committed`)."""
        self._place(Path(out) / SAVED)
        for device in list(self._entries):
            self._log(device)
        files = {n: self._path(n).name for n, (k, _) in self._logged.items() if k}
        cachefile.sync([self._path(n) for n in self._dirty if n in files], self._dir)
        self._dirty.clear()
        self._prune(self._kept | set(files.values()))
        self._kept = set(files.values())
        return {"gen": self._gen, "filled_in": self.filled_in, "saved": {n: list(self._logged[n]) for n in files},
                "digests": {n: self.digests[n][:self._logged[n][0]] for n in files},
                "held": {n: self.count(n) for n in self._entries}, "left": sorted(self.left),
                "reads": self.reads, "replaying": None if self.replaying is None else list(self.replaying),
                "by_rows": self.by_rows}

    def committed(self) -> None:
        """The checkpoint :meth:`checkpoint` saved for is committed: files it does not count on are deleted."""
        if self._dir is not None:
            self._prune(self._kept)

    def _prune(self, keep: set[str]) -> None:
        """Delete the files not in ``keep`` (another fill's, or another run's: no checkpoint counts on them)."""
        for path in self._dir.iterdir():
            if path.name not in keep:
                path.unlink()

    def restore(self, out: str | Path, state: dict, epoch: int) -> None:
        """Take back what a checkpoint of ``epoch`` recorded (:meth:`checkpoint`): the micro-batches each device had
        here then (the first records of its file under ``out/SAVED``, each checked against the digest recorded; in
        memory up to its bound as :meth:`put` keeps them, the rest read from that file, which is cut back to them),
        who departed, what was replayed, and that epoch's replays when it was taken in it.

        Raises:
            ValueError: a file is missing, shorter than the checkpoint says, or a record is not what was saved."""
        self._place(Path(out) / SAVED)
        self._gen, cut = int(state["gen"]), []
        for device, n in state["held"].items():
            k, size = state["saved"].get(device, (0, 0))
            if n != k:
                raise ValueError(f"the checkpoint holds {n} micro-batches of {device} but saved {k}")
            if not n:
                continue
            path, want = self._path(device), state["digests"][device]
            if not path.is_file() or path.stat().st_size < size:
                raise ValueError(f"{path} is missing or shorter than the checkpoint's {size} bytes")
            with open(path, "rb") as f:
                for j in range(n):
                    tensors, dig, where = cachefile.read(f)
                    if not dig == want[j] == digest(tensors):
                        raise ValueError(f"{path}: micro-batch {j} of {device} is not what was saved (digest)")
                    self._take(device, tensors, dig, where)
                if f.tell() != size:
                    raise ValueError(f"{path}: the checkpoint's {n} micro-batches are not its {size} bytes")
            self._logged[device] = (n, size)
            cut.append((path, size))
        for path, size in cut:  # what the stopped run wrote after the checkpoint is not its
            os.truncate(path, size)
        self._kept = {p.name for p, _ in cut}
        self.filled_in, self.left = state["filled_in"], set(state["left"])
        self.reads, self.by_rows = {n: list(v) for n, v in state["reads"].items()}, bool(state["by_rows"])
        self.restored = None if state["replaying"] is None else (int(state["replaying"][0]), state["replaying"][1])
        self._refill = epoch if self.filled_in == epoch else None  # stopped in the epoch that fills it

    def _take(self, device: str, tensors: dict[str, torch.Tensor], dig: str, where: cachefile.Fields) -> None:
        """Hold a micro-batch (digest ``dig``) read back from ``device``'s file: in memory while there is room (as
        :meth:`put`), else read from the file at ``where``."""
        nbytes = sum(t.nbytes for t in tensors.values())
        self.digests.setdefault(device, []).append(dig)
        if self.in_memory_bytes + nbytes <= self.memory:
            self._entries.setdefault(device, []).append(tensors)
            self.in_memory_bytes += nbytes
        else:
            self._entries.setdefault(device, []).append(where)
            self.file_bytes += nbytes

    def _place(self, folder: Path) -> None:
        """Keep the files in ``folder`` from now on: those written before (in the spill folder) are moved there."""
        if self._dir == folder:
            return
        folder.mkdir(parents=True, exist_ok=True)
        before = self._dir if self._dir is not None else None if self._tmp is None else Path(self._tmp.name)
        if before is not None:
            for path in before.iterdir():
                os.replace(path, folder / path.name)  # a rename: the bytes are not copied
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._dir, self._kept = folder, set()
        self._maps.clear()

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
        if self._dir is None and self._tmp is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="activation-cache-", dir=self.folder)
        return (self._dir or Path(self._tmp.name)) / f"{self._gen}-{cachefile.name(device)}"

    def close(self) -> None:
        """Drop every entry; delete the spill folder if no checkpoint placed the files (a checkpoint's stay)."""
        self._entries.clear()
        self._maps.clear()
        self.in_memory_bytes = 0
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
