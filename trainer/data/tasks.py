"""Task data (SST-2, MRPC, MNLI subset, GSM8K) read from the shared data folder, and its tokenisation."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import torch

from sfsim.errors import SfsimError

TASKS = ("sst2", "mrpc", "mnli", "gsm8k")
MNLI_LABELS = ("entailment", "neutral", "contradiction")  # GLUE order: ids 0, 1, 2
IGNORE = -100  # label id that torch's cross-entropy skips
GSM8K_PROMPT = "Question: {question}\nAnswer:"


@dataclass
class TaskData:
    """One split of a task: texts (or text pairs) and integer labels, or GSM8K questions and answers."""

    task: str
    split: str
    texts: list = field(default_factory=list)  # list[str] or list[tuple[str, str]] (pairs); GSM8K: questions
    labels: np.ndarray | None = None  # (N,) int64 class ids; None for GSM8K
    num_labels: int = 0  # 0 for generation tasks
    label_names: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)  # GSM8K only
    answers: list[str] = field(default_factory=list)  # GSM8K full worked answers ending in "#### N"
    finals: list[str | None] = field(default_factory=list)  # GSM8K final numbers, normalised

    @property
    def is_generation(self) -> bool:
        """True for causal-LM tasks (GSM8K), False for classification."""
        return self.task == "gsm8k"

    def __len__(self) -> int:
        return len(self.texts)


def default_data_dir() -> str:
    """Data folder: ``$SFSIM_DATA`` or ``../shared/data`` relative to the working directory."""
    return os.environ.get("SFSIM_DATA", str(Path("..") / "shared" / "data"))


def _file(data_dir: str, task: str, split: str) -> Path:
    """Path of a task's split file, or a one-line error naming what is missing."""
    if task not in TASKS:
        raise SfsimError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if split not in ("train", "dev"):
        raise SfsimError(f"unknown split {split!r}: use train or dev")
    name = {"sst2": "{s}.tsv", "mrpc": "{s}.tsv", "mnli": "{s}.json", "gsm8k": "{s}.jsonl"}[task]
    split_name = "test" if task == "gsm8k" and split == "dev" else split  # GSM8K ships train/test
    path = Path(data_dir) / task / name.format(s=split_name)
    if not Path(data_dir).is_dir():
        raise SfsimError(f"data folder {data_dir} does not exist: pass --data-dir (e.g. ../shared/data) "
                         "or set SFSIM_DATA")
    if not path.is_file():
        raise SfsimError(f"{path} is missing: the data folder needs {task}/{path.name} "
                         "(see ../shared/data/README.md)")
    return path


def _tsv_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """Rows of a GLUE TSV (header may start with a BOM; quotes are literal text)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows and any(c not in rows[0] for c in columns):
        raise SfsimError(f"{path}: header lacks one of the columns {columns}: is this the GLUE file?")
    return rows


def _int_label(path: Path, line: int, value: str | None, allowed: range) -> int:
    """Parse a label cell, with the file and line in the error."""
    try:
        label = int(value or "")
    except ValueError:
        label = -1
    if label not in allowed:
        raise SfsimError(f"{path}:{line}: label {value!r} is not one of {list(allowed)}")
    return label


def _load_glue(task: str, path: Path) -> tuple[list, list[int]]:
    """SST-2 (sentence, label) or MRPC (Quality, #1 String, #2 String) rows."""
    if task == "sst2":
        rows = _tsv_rows(path, ["sentence", "label"])
        texts = [r["sentence"].strip() for r in rows]
        labels = [_int_label(path, i + 2, r["label"], range(2)) for i, r in enumerate(rows)]
    else:
        rows = _tsv_rows(path, ["Quality", "#1 String", "#2 String"])
        texts = [(r["#1 String"].strip(), r["#2 String"].strip()) for r in rows]
        labels = [_int_label(path, i + 2, r["Quality"], range(2)) for i, r in enumerate(rows)]
    return texts, labels


def _load_mnli(path: Path) -> tuple[list, list[int]]:
    """MNLI subset: a JSON object {"0": {"text_a", "text_b", "label"}, ...} in key order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = sorted(data.items(), key=lambda kv: int(kv[0]))
        texts = [(v["text_a"], v["text_b"]) for _, v in items]
        labels = [MNLI_LABELS.index(v["label"]) for _, v in items]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SfsimError(f"{path}: not the MNLI subset format ({{\"0\": {{\"text_a\", \"text_b\", "
                         f"\"label\"}}}} with labels {'/'.join(MNLI_LABELS)}): {e}") from None
    return texts, labels


def _load_gsm8k(path: Path, split: str) -> TaskData:
    """GSM8K JSON lines {"question", "answer"}; the answer ends with "#### N"."""
    questions, answers = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(row["question"])
            answers.append(row["answer"])
        except (ValueError, KeyError, TypeError):
            raise SfsimError(f"{path}:{i + 1}: expected a JSON object with question and answer") from None
    finals = [gsm8k_final_number(a) for a in answers]
    return TaskData("gsm8k", split, texts=questions, questions=questions, answers=answers, finals=finals)


def load_task(task: str, data_dir: str, split: str) -> TaskData:
    """Read one split ("train" or "dev"; GSM8K dev is its test file) of a task from ``data_dir``.

    Example:
        >>> d = load_task("sst2", "tests/fixtures/data", "dev")  # doctest: +SKIP
        >>> len(d), d.num_labels  # doctest: +SKIP
        (40, 2)
    """
    path = _file(data_dir, task, split)
    try:
        return _read_task(task, path, split)
    except (UnicodeDecodeError, csv.Error, OSError) as err:  # a binary, torn or unreadable file: one line
        raise SfsimError(f"{path}: cannot read it as {task} data ({str(err)[:120]}); is this the right file?") from None


def _read_task(task: str, path: Path, split: str) -> TaskData:
    if task == "gsm8k":
        return _load_gsm8k(path, split)
    if task == "mnli":
        texts, labels = _load_mnli(path)
        names = list(MNLI_LABELS)
    else:
        texts, labels = _load_glue(task, path)
        names = ["negative", "positive"] if task == "sst2" else ["not_paraphrase", "paraphrase"]
    return TaskData(task, split, texts=texts, labels=np.asarray(labels, dtype=np.int64),
                    num_labels=len(names), label_names=names)


_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def gsm8k_final_number(text: str) -> str | None:
    """The final number of a GSM8K answer or model output, normalised for exact match.

    Takes the number after "####" if present, else the last number in the text; drops "$" and thousands
    commas and trailing zeros of decimals ("1,234.50" -> "1234.5", "18.00" -> "18").

    Example:
        >>> gsm8k_final_number("48 + 24 = 72 clips.\\n#### 72")
        '72'
    """
    marked = re.search(r"####\s*(" + _NUMBER + ")", text)
    found = [marked.group(1)] if marked else re.findall(_NUMBER, text)
    if not found:
        return None
    raw = found[-1].replace(",", "").replace("$", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    out = format(value.normalize(), "f")
    return "0" if out == "-0" else out


def _indices(n: int, indices) -> list[int]:
    """Selected row indices (all rows when None)."""
    return list(range(n)) if indices is None else [int(i) for i in indices]


def _classification(task_data: TaskData, tokenizer, max_len: int, idx: list[int]) -> dict[str, torch.Tensor]:
    """Tokenise texts (pairs with the tokenizer's separator, or a newline for decoders) and labels."""
    texts = [task_data.texts[i] for i in idx]
    kw = dict(truncation=True, max_length=max_len, padding="longest", return_tensors="pt")
    if texts and isinstance(texts[0], tuple):
        if tokenizer.sep_token is not None:
            enc = tokenizer([a for a, _ in texts], [b for _, b in texts], **kw)
        else:  # decoders have no pair template: join the two texts on a new line
            enc = tokenizer([f"{a}\n{b}" for a, b in texts], **kw)
    else:
        enc = tokenizer(texts, **kw)
    out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    out["labels"] = torch.as_tensor(task_data.labels[idx], dtype=torch.long)  # (N,)
    return out


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    """Pad rows of ids to one length: (N, T)."""
    T = max((len(r) for r in rows), default=0)
    return torch.tensor([[value] * (T - len(r)) + r if left else r + [value] * (T - len(r)) for r in rows],
                        dtype=torch.long)


def _causal_lm(task_data: TaskData, tokenizer, max_len: int, idx: list[int]) -> dict[str, torch.Tensor]:
    """Prompt + answer + EOS as one sequence; labels -100 on prompt and padding (loss on the answer only)."""
    if tokenizer.eos_token_id is None:
        raise SfsimError("gsm8k is a generation task: use a decoder model (smollm2-135m or GPT-2), not BERT")
    ids, labels = [], []
    for i in idx:
        prompt = tokenizer(GSM8K_PROMPT.format(question=task_data.questions[i]))["input_ids"]
        answer = tokenizer(" " + task_data.answers[i], add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        ids.append((prompt + answer)[:max_len])
        labels.append(([IGNORE] * len(prompt) + answer)[:max_len])
    left = tokenizer.padding_side == "left"
    input_ids = _pad(ids, tokenizer.pad_token_id, left)  # (N, T)
    return {"input_ids": input_ids, "attention_mask": _pad([[1] * len(r) for r in ids], 0, left),
            "labels": _pad(labels, IGNORE, left)}  # labels (N, T), aligned with input_ids (unshifted)


def encode(task_data: TaskData, tokenizer, max_len: int, indices=None) -> dict[str, torch.Tensor]:
    """Tokenise rows ``indices`` (all when None), padded to the longest row (at most ``max_len``).

    Returns input_ids (N, T), attention_mask (N, T), token_type_ids (N, T) when the tokenizer makes them
    (BERT pairs), and labels: (N,) class ids, or for GSM8K (N, T) token ids with -100 on prompt and
    padding (not shifted: shift inside the loss as HF causal LMs do).
    """
    if max_len < 2:
        raise SfsimError(f"max_len must be >= 2 tokens (got {max_len})")
    idx = _indices(len(task_data), indices)
    if task_data.is_generation:
        return _causal_lm(task_data, tokenizer, max_len, idx)
    return _classification(task_data, tokenizer, max_len, idx)


def encode_prompts(task_data: TaskData, tokenizer, max_len: int, indices=None) -> dict[str, torch.Tensor]:
    """GSM8K prompts only, left-padded for greedy decoding: input_ids (N, T), attention_mask (N, T).

    Prompts longer than ``max_len`` keep their last ``max_len`` tokens (the question's end and "Answer:").
    """
    idx = _indices(len(task_data), indices)
    ids = [tokenizer(GSM8K_PROMPT.format(question=task_data.questions[i]))["input_ids"][-max_len:] for i in idx]
    return {"input_ids": _pad(ids, tokenizer.pad_token_id, left=True),
            "attention_mask": _pad([[1] * len(r) for r in ids], 0, left=True)}


def micro_batches(perm: torch.Tensor, micro_batch: int, lengths: torch.Tensor | None = None, window: int = 0,
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Cut a shuffled order of rows into micro-batches of row indices; optionally length-bucketed.

    ``window`` = 0: consecutive rows of ``perm``. ``window`` = W > 0 (with ``lengths``, tokens per row):
    each run of W micro-batches' rows is sorted by length (stable) before it is cut, and those W
    micro-batches are then put in a random order (``generator``), so rows of like length share a
    micro-batch and little of it is padding. Bucketing changes which samples train together; the
    micro-batch count and sizes stay the same, and a seed still gives one order.

    Example:
        >>> [b.tolist() for b in micro_batches(torch.tensor([3, 0, 2, 1]), 2)]
        [[3, 0], [2, 1]]
        >>> g = torch.Generator().manual_seed(0)
        >>> sorted(b.tolist() for b in micro_batches(torch.tensor([3, 0, 2, 1]), 2, torch.tensor([5, 1, 4, 2]), 2, g))
        [[1, 3], [2, 0]]
    """
    if window <= 0 or lengths is None:
        return [perm[i:i + micro_batch] for i in range(0, len(perm), micro_batch)]
    out = []
    span = micro_batch * window
    for s in range(0, len(perm), span):
        chunk = perm[s:s + span]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        mbs = [chunk[i:i + micro_batch] for i in range(0, len(chunk), micro_batch)]
        out += [mbs[int(j)] for j in torch.randperm(len(mbs), generator=generator)]
    return out
