"""LoRA targets: one vocabulary for the simulator and the trainer, resolved here and nowhere else.

A scenario's ``training.lora.targets`` (and so ``sfsim run``'s) may name, per model family:

- a module of the block by its Hugging Face name (``c_attn``, ``q_proj``, ``query``; a bare name takes
  every module of that name: GPT-2's ``c_proj`` is both the attention output and the MLP down
  projection, BERT's ``dense`` all three) or by its path in the block (``attn.c_proj``, ``mlp.c_proj``,
  ``attention.output.dense``, ``intermediate.dense``, ``output.dense``);
- a family-independent alias (:data:`ALIASES`): ``q``, ``k``, ``v``, ``o`` (attention projections),
  ``qkv``, ``attn`` (or ``attention``: q, k, v and o), ``mlp`` (or ``ffn``), ``all-linear``.

GPT-2 computes q, k and v in one fused ``c_attn`` matrix, and Phi-3 in one ``qkv_proj`` (and gate
and up in one ``gate_up_proj``), which LoRA can only adapt as a whole, so ``q``, ``k`` or ``v`` alone
are refused on those families with that fix (``qkv``, ``c_attn`` or ``qkv_proj``) rather than
silently widened to all three. :func:`resolve_targets` turns any of these into canonical names
(a module's bare name where it is unique in the block, else its path), which the cost model
(:func:`sfsim.model.flops.target_matches`) and the trainer (``trainer.model.lora.target_regex``) match alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from sfsim.model.arch import BUILTIN, DECODERS, Arch
from sfsim.model.flops import block_graph, target_matches

_FUSED = "fused"
_LLAMA: dict[str, tuple[str, ...] | str] = {
    "q": ("self_attn.q_proj",), "k": ("self_attn.k_proj",), "v": ("self_attn.v_proj",), "o": ("self_attn.o_proj",),
    "mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
_ROLES: dict[str, dict[str, tuple[str, ...] | str]] = {
    "gpt2": {"q": _FUSED, "k": _FUSED, "v": _FUSED, "o": ("attn.c_proj",), "qkv": ("attn.c_attn",),
             "mlp": ("mlp.c_fc", "mlp.c_proj")},
    **{f: _LLAMA for f in DECODERS if f != "phi3"},
    "phi3": {"q": _FUSED, "k": _FUSED, "v": _FUSED, "o": ("self_attn.o_proj",), "qkv": ("self_attn.qkv_proj",),
             "mlp": ("mlp.gate_up_proj", "mlp.down_proj")},
    "bert": {"q": ("attention.self.query",), "k": ("attention.self.key",), "v": ("attention.self.value",),
             "o": ("attention.output.dense",), "mlp": ("intermediate.dense", "output.dense")},
}
"""Per family: the block's modules behind each attention projection and the MLP (the rest derive)."""

ALIASES = ("q", "k", "v", "o", "qkv", "attn", "attention", "mlp", "ffn", "all-linear")
"""Family-independent target names, accepted for every model family (``q``/``k``/``v`` not on GPT-2, Phi-3)."""

_SYNONYMS = {"attention": "attn", "ffn": "mlp"}
_OF_FAMILY = {"gpt2": BUILTIN["gpt2"], "llama": BUILTIN["smollm2-135m"], "bert": BUILTIN["minilm-l6"],
              "qwen2": BUILTIN["qwen2.5-0.5b"], "qwen3": BUILTIN["qwen3-0.6b"], "mistral": BUILTIN["mistral-7b"],
              "gemma3": BUILTIN["gemma3-270m"], "phi3": BUILTIN["phi-4-mini"]}


def module_paths(arch: Arch) -> tuple[str, ...]:
    """The linear modules of one block of ``arch``, as paths in the block, in execution order.

    Example:
        >>> from sfsim.model.arch import BUILTIN
        >>> module_paths(BUILTIN["gpt2"])
        ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')
    """
    return tuple(dict.fromkeys(op.path for op in block_graph(arch)[0] if op.kind == "linear"))


def alias_paths(family: str, alias: str) -> tuple[str, ...] | str:
    """The block paths an alias stands for in ``family`` (``"fused"`` for GPT-2's q, k, v).

    Example:
        >>> alias_paths("llama", "attn")
        ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj')
    """
    roles, alias = _ROLES[family], _SYNONYMS.get(alias, alias)
    if alias in roles:
        return roles[alias]
    if alias == "qkv":
        return tuple(p for r in "qkv" for p in roles[r])
    if alias == "attn":
        return tuple(dict.fromkeys(p for r in ("qkv", "o") for p in alias_paths(family, r)))
    raise KeyError(alias)


def canonical(paths: Sequence[str], all_paths: Sequence[str]) -> tuple[str, ...]:
    """Each path's bare module name where no other module of the block shares it, else the path."""
    leaf = [p.rsplit(".", 1)[-1] for p in all_paths]
    return tuple(p.rsplit(".", 1)[-1] if leaf.count(p.rsplit(".", 1)[-1]) == 1 else p for p in paths)


def vocabulary(arch: Arch) -> str:
    """The valid names for ``arch``, as the one-line errors list them."""
    paths = module_paths(arch)
    names = dict.fromkeys(p.rsplit(".", 1)[-1] for p in paths)
    names.update(dict.fromkeys(c for c in canonical(paths, paths) if "." in c))
    return f"module names {', '.join(names)} or aliases {', '.join(ALIASES)}"


def resolve_targets(arch: Arch, targets: Sequence[str] | None) -> tuple[str, ...]:
    """Canonical LoRA targets of ``arch`` for what a user wrote (``None``: the family's defaults).

    Args:
        arch: the architecture (its family decides the modules).
        targets: module names, in-block paths or aliases (see the module docstring).

    Returns:
        Canonical names in block order, each module once (``sfsim.model.flops.target_matches`` matches them).

    Raises:
        ValueError: one line naming the bad target and the valid names and aliases.

    Example:
        >>> from sfsim.model.arch import BUILTIN
        >>> resolve_targets(BUILTIN["gpt2"], ["attn"]), resolve_targets(BUILTIN["minilm-l6"], ["q", "v"])
        (('c_attn', 'attn.c_proj'), ('query', 'value'))
        >>> resolve_targets(BUILTIN["gpt2"], ["c_proj"])
        ('attn.c_proj', 'mlp.c_proj')
    """
    paths = module_paths(arch)
    if targets is None:
        targets = arch.default_lora_targets
    if not targets:
        raise ValueError(f"no LoRA target given; use {vocabulary(arch)} (or leave targets out for "
                         f"{', '.join(arch.default_lora_targets)})")
    chosen: set[str] = set()
    for t in targets:
        if t == "all-linear":
            hit: tuple[str, ...] | str = paths
        elif t in ALIASES:
            hit = alias_paths(arch.family, t)
        else:
            hit = tuple(p for p in paths if target_matches(p, t)) or tuple(p for p in paths if p.endswith("." + t))
        if hit == _FUSED:
            fused = canonical(alias_paths(arch.family, "qkv"), paths)[0]
            who = {"gpt2": "GPT-2", "phi3": "Phi-3"}[arch.family]
            raise ValueError(f"{t!r} has no module of its own in {arch.family}-family models: {who} computes q, k "
                             f"and v in one fused {fused}, so write qkv (or {fused}) to adapt all three")
        if not hit:
            raise ValueError(f"{t!r} is not a LoRA target of {arch.family}-family models; use {vocabulary(arch)}")
        chosen.update(hit)
    return canonical([p for p in paths if p in chosen], paths)


def resolve_for_family(family: str, targets: Sequence[str] | None) -> tuple[str, ...]:
    """:func:`resolve_targets` for a model known only by its family (the trainer's loaded model).

    Example:
        >>> resolve_for_family("llama", ["qkv"])
        ('q_proj', 'k_proj', 'v_proj')
    """
    if family not in _OF_FAMILY:
        raise ValueError(f"unknown model family {family!r}: use one of {', '.join(_OF_FAMILY)}")
    return resolve_targets(_OF_FAMILY[family], targets)
