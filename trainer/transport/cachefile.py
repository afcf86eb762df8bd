"""The activation cache's file per device (``trainer.transport.cache``): an append-only log of micro-batches.

Each record is its header's length (8 bytes, little-endian), the header (JSON: the micro-batch's digest and each
field's dtype and shape) and then each field's bytes, in :data:`FIELDS` order. The cache reads a record's fields back
through a memory map at the offsets :func:`write` returns; ``--resume`` reads the records a checkpoint counts with
:func:`read` and checks each one's digest.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

#: The tensors of a cached micro-batch, in the order they are stored.
FIELDS = ("hidden", "attention_mask", "labels")

_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                      torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool)}
_LEN = struct.Struct("<Q")

Fields = list[tuple[int, torch.dtype, tuple[int, ...]]]
"""Where a record's fields are in its file: (offset, dtype, shape) of each, in :data:`FIELDS` order."""


def name(device: str) -> str:
    """A device's file name (any device name gives a safe one)."""
    return f"{len(device)}-{device.encode().hex()}.bin"


def write(f, at: int, tensors: dict[str, torch.Tensor], dig: str) -> tuple[Fields, int]:
    """Append one micro-batch to ``f`` (positioned at byte ``at``); return where its fields are and the bytes written."""
    parts = [tensors[k].detach().contiguous() for k in FIELDS]
    head = json.dumps({"digest": dig, "fields": [[str(t.dtype).removeprefix("torch."), list(t.shape)]
                                                 for t in parts]}).encode()
    f.write(_LEN.pack(len(head)) + head)
    offset, where = at + _LEN.size + len(head), []
    for t in parts:
        f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        where.append((offset, t.dtype, tuple(t.shape)))
        offset += t.nbytes
    return where, offset - at


def read(f) -> tuple[dict[str, torch.Tensor], str, Fields]:
    """The record at ``f``'s position: its tensors, the digest written with it and where its fields are.

    Raises:
        ValueError: the record is cut short (the file ends inside it) or its header is not one."""
    at = f.tell()
    raw = f.read(_LEN.size)
    if len(raw) < _LEN.size:
        raise ValueError(f"a record at byte {at} is cut short")
    (n,) = _LEN.unpack(raw)
    head = json.loads(f.read(n))
    offset, out, where = at + _LEN.size + n, {}, []
    for k, (dtype, shape) in zip(FIELDS, head["fields"], strict=True):
        dt = _DTYPES[dtype]
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dt).element_size()
        data = f.read(size)
        if len(data) < size:
            raise ValueError(f"a record at byte {at} is cut short")
        raw_t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
        out[k] = raw_t.view(dt).reshape(shape)
        where.append((offset, dt, tuple(shape)))
        offset += size
    return out, head["digest"], where


def sync(paths, folder: Path) -> None:
    """fsync each file of ``paths`` and then ``folder`` (its entries: new names and renames)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
