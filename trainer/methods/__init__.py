"""The four fine-tuning methods (and the SplitFrozen ablation), keyed by the names in ``sfsim.methods``."""

from __future__ import annotations

from sfsim.methods import METHODS as METHOD_NAMES
from sfsim.methods import canonical
from trainer.methods.cenlora import CenLoRA
from trainer.methods.common import Method, Setup
from trainer.methods.fedlora import FedLoRA
from trainer.methods.splitfrozen import SplitFrozen, SplitFrozenSequential
from trainer.methods.splitlora import SplitLoRA

#: Method classes by canonical name (every name in ``sfsim.methods.METHODS``).
REGISTRY: dict[str, type[Method]] = {
    "splitfrozen": SplitFrozen,
    "splitfrozen-sequential": SplitFrozenSequential,
    "splitlora": SplitLoRA,
    "fedlora": FedLoRA,
    "cenlora": CenLoRA,
}
assert set(REGISTRY) == set(METHOD_NAMES), "trainer methods must cover sfsim.methods.METHODS"


def build_method(name: str, setup: Setup) -> Method:
    """The method called ``name`` (aliases accepted) set up on ``setup``."""
    return REGISTRY[canonical(name)](setup)


__all__ = ["REGISTRY", "Method", "Setup", "build_method", "CenLoRA", "FedLoRA", "SplitFrozen",
           "SplitFrozenSequential", "SplitLoRA"]
