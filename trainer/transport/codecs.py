"""Activation codecs: what a (B, T, d) activation or cut-layer gradient looks like on the wire.

Pure torch, no I/O. :func:`encode` runs on the sender and :func:`decode` on the receiver; every
codec's encoded size is exactly :func:`sfsim.cost.wire.wire_bytes` (the simulator's count). The
quantising codecs are training-free and per token (absmax over the d values of one token):

* ``int8``: ``q = round(x / s)`` with ``s = absmax / 127``, ``q`` in -127..127 (int8), ``s`` float32 (B, T).
  Error bound per value: ``|x - q s| <= s / 2``.
* ``int4``: ``s = absmax / 7``, ``q`` in -7..7 stored as ``q + 8`` (1..15), two per byte (even index
  in the low nibble), an odd ``d`` padded with one zero (nibble 8). Error bound ``s / 2``.

The encoded tensors are named like the plain one (``hidden`` or ``grad``) plus ``scales`` for the
quantising codecs; :func:`spec` says which dtypes and shapes the receiver must see, so a header that
does not match is refused before any payload is received, and :func:`decode` refuses values no
encoder produces (a scale that is negative or not finite, -128 in int8, a zero nibble in int4).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext

import torch

from sfsim.cost.wire import CODECS, layout

#: The codec's dtype on the wire for its values.
VALUE_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8,
               "int4": torch.uint8}
SCALE_DTYPE = torch.float32
QMAX = {"int8": 127, "int4": 7}
#: Which tensor of which message kind travels in the run's codec: activations up, cut-layer gradients down.
CODED = {"act": "hidden", "grad": "grad"}


class CodecError(ValueError):
    """An encoded payload no encoder of the announced codec produces (the transport drops its sender)."""


def by_code(code: int) -> str:
    """The codec name of wire number ``code``; raises :class:`CodecError` for an unknown one."""
    for name, lay in CODECS.items():
        if lay.code == code:
            return name
    raise CodecError(f"unknown codec number {code}")


def spec(codec: str, batch: int, tokens: int, hidden: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """What ``codec`` sends for a (batch, tokens, hidden) tensor: ``values`` and (quantising codecs) ``scales``."""
    width = math.ceil(hidden / 2) if codec == "int4" else hidden
    out = {"values": (VALUE_DTYPE[codec], (batch, tokens, width))}
    if layout(codec).scale_bytes:
        out["scales"] = (SCALE_DTYPE, (batch, tokens))
    return out


def check_spec(codec: str, got: dict[str, tuple[torch.dtype, tuple]], hidden: int) -> tuple[int, int]:
    """Check announced ``values``/``scales`` (dtype, shape) against ``codec``; return (B, T).

    Raises:
        CodecError: a dtype, rank, width or scales shape that ``codec`` does not send.
    """
    dtype, shape = got["values"]
    if len(shape) != 3:
        raise CodecError(f"{codec} values must be (B, T, width), got {dtype} {shape}")
    want = spec(codec, shape[0], shape[1], hidden)
    if {k: (d, tuple(s)) for k, (d, s) in got.items()} != want:
        have = ", ".join(f"{k} {d} {tuple(s)}" for k, (d, s) in sorted(got.items()))
        need = ", ".join(f"{k} {d} {s}" for k, (d, s) in sorted(want.items()))
        raise CodecError(f"codec {codec} sends {need}; got {have}")
    return shape[0], shape[1]


def encode(x: torch.Tensor, codec: str) -> dict[str, torch.Tensor]:
    """Encode a (B, T, d) floating tensor: ``values`` and, for int8/int4, ``scales`` (B, T) float32."""
    layout(codec)
    x = x.detach()
    if codec in ("fp32", "fp16", "bf16"):
        return {"values": x.to(VALUE_DTYPE[codec]).contiguous()}
    xf = x.float()
    qmax = QMAX[codec]
    scales = xf.abs().amax(dim=-1) / qmax  # (B, T)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero token encodes as zeros
    q = torch.round(xf / safe.unsqueeze(-1)).clamp_(-qmax, qmax)  # (B, T, d)
    if codec == "int8":
        return {"values": q.to(torch.int8).contiguous(), "scales": scales.contiguous()}
    u = (q + 8).to(torch.uint8)  # 1..15
    if u.shape[-1] % 2:
        u = torch.cat([u, torch.full_like(u[..., :1], 8)], dim=-1)  # (B, T, d + 1): pad with a zero value
    packed = u[..., 0::2] | (u[..., 1::2] << 4)  # (B, T, ceil(d / 2))
    return {"values": packed.contiguous(), "scales": scales.contiguous()}


def decode(enc: dict[str, torch.Tensor], codec: str, hidden: int) -> torch.Tensor:
    """Decode what :func:`encode` produced back to a (B, T, ``hidden``) float32 tensor.

    Raises:
        CodecError: shapes or dtypes that do not match ``codec`` (see :func:`check_spec`), or values
            its encoder never produces.
    """
    check_spec(codec, {k: (v.dtype, tuple(v.shape)) for k, v in enc.items()}, hidden)
    check_values(enc, codec, hidden)
    v = enc["values"]
    if codec in ("fp32", "fp16", "bf16"):
        return v.float()
    s = enc["scales"]
    if codec == "int8":
        return v.float() * s.unsqueeze(-1)
    q = torch.stack([v & 0x0F, v >> 4], dim=-1).flatten(-2)[..., :hidden]  # (B, T, d)
    return (q.float() - 8) * s.unsqueeze(-1)


def check_values(enc: dict[str, torch.Tensor], codec: str, hidden: int) -> None:
    """Refuse values the encoder of ``codec`` never produces (shapes already checked by :func:`check_spec`):
    non-finite floats, a negative or non-finite scale, -128 in int8, a zero nibble or a non-zero padding
    nibble in int4.

    Raises:
        CodecError: the first such value found.
    """
    v = enc["values"]
    if codec in ("fp32", "fp16", "bf16"):
        if not bool(torch.isfinite(v).all()):
            raise CodecError(f"non-finite values (NaN or inf) in {codec} values")
        return
    s = enc["scales"]
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise CodecError(f"{codec} scales must be finite and >= 0")
    if codec == "int8":
        if v.numel() and int(v.min()) < -127:
            raise CodecError("int8 values must lie in -127..127")
        return
    lo, hi = v & 0x0F, v >> 4
    if v.numel() and (int(lo.min()) == 0 or int(hi.min()) == 0):
        raise CodecError("int4 nibbles must lie in 1..15 (value + 8)")
    if hidden % 2 and bool((hi[..., -1] != 8).any()):
        raise CodecError("int4 padding nibble must encode zero (8)")


def pack(tensors: dict[str, torch.Tensor], name: str, codec: str) -> dict[str, torch.Tensor]:
    """A message's tensors with ``tensors[name]`` encoded: ``name`` holds the values, ``scales`` the scales."""
    enc = encode(tensors[name], codec)
    out = {k: v for k, v in tensors.items() if k != name}
    out[name] = enc["values"]
    if "scales" in enc:
        out["scales"] = enc["scales"]
    return out


def unpack(tensors: dict[str, torch.Tensor], name: str, codec: str, hidden: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack`: ``tensors[name]`` decoded to float32, ``scales`` removed."""
    enc = {"values": tensors[name], **({"scales": tensors["scales"]} if "scales" in tensors else {})}
    out = {k: v for k, v in tensors.items() if k not in (name, "scales")}
    out[name] = decode(enc, codec, hidden)
    return out


def encode_message(msg, codec: str, meter=None, lane: str = ""):
    """``msg`` (a ``trainer.transport.runtime.Message``) as it goes on the wire: its :data:`CODED` tensor
    encoded, an ``act`` message's aux set to the codec's number; other kinds unchanged.

    The encoding is timed on ``meter`` (lane ``lane``, op ``encode``, phase ``codec_encode``) unless the codec is
    ``fp32`` (nothing to do).
    """
    name = CODED.get(msg.kind)
    if name is None or name not in msg.tensors:
        return msg
    timer = nullcontext() if meter is None or codec == "fp32" else \
        meter.compute(lane, "encode", "codec_encode", mb=msg.mb, device=msg.device, count=False)
    with timer:
        tensors = pack(msg.tensors, name, codec)
    return dataclasses.replace(msg, tensors=tensors, aux=layout(codec).code if msg.kind == "act" else msg.aux)


def decode_message(msg, codec: str, hidden: int | None, meter=None, lane: str = ""):
    """Inverse of :func:`encode_message` on the receiver (timed as op ``decode``, phase ``codec_decode``); raises
    :class:`CodecError` for a payload its encoder never produces or an ``act`` in another codec.
    ``hidden`` ``None``: the width the payload implies (an even width for int4)."""
    name = CODED.get(msg.kind)
    if name is None or name not in msg.tensors:
        return msg
    if hidden is None:
        hidden = msg.tensors[name].shape[-1] * (2 if codec == "int4" else 1)
    if msg.kind == "act" and msg.aux != layout(codec).code:
        raise CodecError(f"activations in codec number {msg.aux}; this run sends {codec}")
    timer = nullcontext() if meter is None or codec == "fp32" else \
        meter.compute(lane, "decode", "codec_decode", mb=msg.mb, device=msg.device, count=False)
    with timer:
        tensors = unpack(msg.tensors, name, codec, hidden)
    return dataclasses.replace(msg, tensors=tensors, aux=0 if msg.kind == "act" else msg.aux)
