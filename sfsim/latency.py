"""Measured per-layer latency tables for devices (the alternative to a nominal ``flops`` rate).

Format (YAML; times are unit strings or seconds)::

    device: raspberry-pi-5          # what was measured (free text)
    model: gpt2                     # architecture it was measured on (built-in name or config path)
    micro_batch: 8                  # shape of the measured micro-batch
    seq_len: 128
    dtype: fp32
    forward:                        # wall time of one micro-batch's forward, per layer
      embed: 3 ms
      blocks: [210 ms, 208 ms, ...] # one per block, or a single value used for every block
      norm: 1 ms
      head: 4 ms
    backward:                       # optional: B + W per layer when the device trains (fedlora,
      blocks: 430 ms                # splitlora); else estimated from forward times and FLOP ratios
    source: "sfsim profile on a Pi 5, 2026-11-20"

When a scenario's micro-batch or sequence length differs from the table's, the cost model scales
each layer's time by the ratio of its FLOPs at the two shapes.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from sfsim.schema import STRICT, Seconds, read_yaml, validate


@dataclass(config=STRICT, kw_only=True)
class LayerTimes:
    """Seconds per micro-batch for each layer kind."""

    embed: Seconds = 0.0
    blocks: list[Seconds] | Seconds
    norm: Seconds = 0.0
    head: Seconds = 0.0

    def block_times(self, n_layers: int) -> list[float]:
        """Per-block times as a list of ``n_layers`` (a scalar is repeated)."""
        if isinstance(self.blocks, list):
            return list(self.blocks)
        return [float(self.blocks)] * n_layers


@dataclass(config=STRICT, kw_only=True)
class LatencyProfile:
    """A measured per-layer latency table (see the module docstring for the file format)."""

    model: str
    micro_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    forward: LayerTimes
    backward: LayerTimes | None = None
    device: str = ""
    dtype: str = "fp32"
    source: str = ""

    @model_validator(mode="after")
    def _positive(self):
        for lt in (self.forward, self.backward):
            if lt is not None and isinstance(lt.blocks, list) and not lt.blocks:
                raise ValueError("blocks: give one time per block or a single time for all blocks")
        return self


def load_latency_profile(path: str | Path) -> LatencyProfile:
    """Read and validate a latency table; one-line ``ConfigError`` on bad input."""
    return validate(LatencyProfile, read_yaml(path), file=str(path))
