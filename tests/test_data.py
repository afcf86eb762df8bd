"""Task loaders on the shipped fixtures (same formats as ../shared/data), encoding and GSM8K answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sfsim.errors import SfsimError
from trainer import encode, encode_prompts, gsm8k_final_number, load_task, tiny_model
from trainer.data.tasks import IGNORE

DATA = str(Path(__file__).parent / "fixtures" / "data")


def test_sst2():
    d = load_task("sst2", DATA, "train")
    assert (len(d), d.num_labels, d.label_names) == (40, 2, ["negative", "positive"])
    assert d.texts[0] == "hide new secretions from the parental units"
    assert d.labels[:4].tolist() == [0, 0, 1, 0] and d.labels.dtype == np.int64
    assert np.bincount(d.labels).tolist() == [20, 20]


def test_mrpc_pairs_with_bom_header():
    d = load_task("mrpc", DATA, "train")
    assert len(d) == 40 and d.labels[:3].tolist() == [1, 0, 1]
    a, b = d.texts[0]
    assert a.startswith("Amrozi accused his brother , whom he called \" the witness \"")
    assert b.startswith("Referring to him as only \" the witness \"")


def test_mnli_labels_in_glue_order():
    d = load_task("mnli", DATA, "dev")
    assert (len(d), d.num_labels) == (42, 3)
    assert d.texts[0] == ("Salt kept the town fed.", "Salt kept the town thriving.")
    assert d.labels[:6].tolist() == [0, 2, 1, 2, 2, 0]


def test_gsm8k_train_and_test_files():
    d = load_task("gsm8k", DATA, "train")
    assert d.is_generation and d.labels is None and len(d) == 40
    assert d.finals[:5] == ["72", "10", "5", "42", "624"]
    assert load_task("gsm8k", DATA, "dev").finals[:3] == ["18", "3", "70000"]  # dev = test.jsonl


def test_missing_data_gives_one_line_errors(tmp_path):
    with pytest.raises(SfsimError, match="data folder .* does not exist: pass --data-dir"):
        load_task("sst2", str(tmp_path / "none"), "train")
    with pytest.raises(SfsimError, match=r"sst2/train.tsv is missing"):
        load_task("sst2", str(tmp_path), "train")
    with pytest.raises(SfsimError, match="unknown task 'qqp'"):
        load_task("qqp", DATA, "train")
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\tx\n")
    with pytest.raises(SfsimError, match=r"dev.tsv:3: label 'x' is not one of \[0, 1\]"):
        load_task("sst2", str(tmp_path), "dev")


@pytest.mark.parametrize(("text", "want"), [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("So she pays $18.00 in total.", "18"),
    ("3 apples cost 4.50 dollars", "4.5"),
    ("the answer is 1,000,000.", "1000000"),
    ("#### 100", "100"),
    ("no number at all", None),
    ("#### 7 and later 9", "7"),
])
def test_gsm8k_final_number(text, want):
    assert gsm8k_final_number(text) == want


def test_encode_classification_single_and_pairs():
    gpt = tiny_model("gpt2").tokenizer
    d = load_task("sst2", DATA, "dev")
    e = encode(d, gpt, max_len=16, indices=[0, 1, 2])
    assert e["input_ids"].shape == (3, 16) and e["labels"].tolist() == d.labels[:3].tolist()
    assert e["input_ids"][1, :10].tolist() == gpt("unflinchingly bleak")["input_ids"][:10]
    bert = tiny_model("bert").tokenizer
    m = encode(load_task("mnli", DATA, "dev"), bert, max_len=64, indices=[0])
    n_a = len("Salt kept the town fed.")
    assert m["token_type_ids"][0].tolist()[: n_a + 3] == [0] * (n_a + 2) + [1]  # [CLS] a [SEP] | b
    joined = encode(load_task("mnli", DATA, "dev"), gpt, max_len=64, indices=[0])
    assert gpt.decode(joined["input_ids"][0][joined["attention_mask"][0].bool()]) == \
        "Salt kept the town fed.\nSalt kept the town thriving."


@pytest.mark.parametrize("side", ["right", "left"])
def test_encode_gsm8k_loss_on_answer_only(side):
    tok = tiny_model("llama").tokenizer
    tok.padding_side = side
    d = load_task("gsm8k", DATA, "train")
    e = encode(d, tok, max_len=400, indices=[0, 1])
    assert e["labels"].shape == e["input_ids"].shape
    for row in range(2):
        kept = e["labels"][row][e["labels"][row] != IGNORE].tolist()
        answer = tok(" " + d.answers[row], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert kept == answer
        mask = e["attention_mask"][row].bool()
        prompt = tok("Question: " + d.questions[row] + "\nAnswer:")["input_ids"]
        assert e["input_ids"][row][mask].tolist() == prompt + answer
    assert (e["labels"][e["attention_mask"] == 0] == IGNORE).all()
    short = encode(d, tok, max_len=20, indices=[0])
    assert short["input_ids"].shape == (1, 20) and (short["labels"] == IGNORE).all()  # prompt fills it


def test_encode_prompts_left_padded():
    tok = tiny_model("gpt2").tokenizer
    d = load_task("gsm8k", DATA, "dev")
    p = encode_prompts(d, tok, max_len=1000, indices=[0, 1])
    lens = [len(tok("Question: " + q + "\nAnswer:")["input_ids"]) for q in d.questions[:2]]
    assert p["attention_mask"].sum(1).tolist() == lens
    assert (p["attention_mask"][:, -1] == 1).all()  # prompts end at the right edge
    with pytest.raises(SfsimError, match="gsm8k is a generation task"):
        encode(d, tiny_model("bert").tokenizer, max_len=32, indices=[0])
