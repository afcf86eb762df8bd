"""What a scenario asks of the wire that the runtime must honour or refuse: codec, training dtype, activation cache.

A value the runtime cannot honour is an error (one line, exit 2), never silently ignored: the
simulator and planner cost whatever the scenario says, so a run that did something else would be
compared with the wrong prediction.
"""

from __future__ import annotations

from sfsim.cost.wire import CODECS
from sfsim.errors import SfsimError
from sfsim.units import parse_quantity


def wire_settings(cfg, scenario) -> tuple[str, float | None]:
    """The activation codec (--wire-dtype, else training.wire_dtype) and the activation cache's memory bound
    (``None``: no cache); what the runtime cannot honour is refused (trainer.transport.codecs)."""
    tr = scenario.training
    codec = cfg.wire_dtype or tr.wire_dtype
    if codec not in CODECS:
        raise SfsimError(f"--wire-dtype {codec!r}: use one of {', '.join(CODECS)}")
    if tr.dtype != "fp32":
        raise SfsimError(f"{cfg.devices}: training.dtype: {tr.dtype}: the runtime trains in fp32 (a {tr.dtype} "
                         "run is a simulator what-if only); set training.dtype: fp32 to run it for real")
    if not tr.cache_activations:
        return codec, None
    if not cfg.method.startswith("splitfrozen"):
        raise SfsimError(f"{cfg.devices}: training.cache_activations: {cfg.method} trains the device side, so its "
                         "activations change every step; only splitfrozen can cache them: set it to false")
    try:
        return codec, parse_quantity(cfg.cache_memory, "size")
    except ValueError as err:
        raise SfsimError(f"--cache-memory: {err}") from None
