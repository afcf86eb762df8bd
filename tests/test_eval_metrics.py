"""Classification scores (accuracy, F1, macro-F1), the majority-class baseline, and their place in a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.methods.evaluate import classification_scores, majority_baseline

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_three_classes_by_hand():
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 1, FP 1, FN 1 -> 1/2; class 2: TP 1, FP 1, FN 2 -> 2/5
    s = classification_scores([0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 2], 3)
    assert s == {"accuracy": 0.5, "macro_f1": 0.522222, "f1": None, "per_class_f1": [0.666667, 0.5, 0.4]}


def test_binary_f1_is_the_positive_class():
    # positive class 1: TP 2, FP 1, FN 1 -> 4/6; class 0: TP 1, FP 1, FN 1 -> 2/4
    s = classification_scores(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]), 2)
    assert s == {"accuracy": 0.6, "macro_f1": 0.583333, "f1": 0.666667, "per_class_f1": [0.5, 0.666667]}
    perfect = classification_scores([0, 1], [0, 1], 2)
    assert (perfect["accuracy"], perfect["macro_f1"], perfect["f1"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        classification_scores([0, 1, 1], [0, 1], 2)


def test_majority_baseline_on_mrpc_dev_mix():
    labels = np.array([1] * 279 + [0] * 129)  # MRPC dev: 279 paraphrases of 408
    b = majority_baseline(labels, 2)
    # accuracy 279/408; F1 of class 1 = 2*279 / (2*279 + 129); class 0 is never answered: F1 0
    assert b == {"class": 1, "accuracy": 0.683824, "macro_f1": 0.406114, "f1": 0.812227,
                 "per_class_f1": [0.0, 0.812227]}
    assert majority_baseline([2, 2, 0, 1], 3)["macro_f1"] == 0.222222  # F1 2/3 on class 2, 0 on the others
    assert majority_baseline([0, 1], 2)["class"] == 0  # a tie goes to the lower id


def test_run_reports_scores_baseline_and_warns_of_an_absent_class(tiny_gpt2, tmp_path, capsys):
    from trainer.run.runner import run

    fleet = tmp_path / "two.yaml"  # two devices, label-skew:1: classes 0 and 1 only, never 2
    fleet.write_text((FIXTURES / "run_tiny.yaml").read_text().replace(
        "num_labels: 2", "num_labels: 3").replace("count: 2", "count: 1"))
    from trainer.run.runner import RunConfig

    m = run(RunConfig(devices=str(fleet), model=tiny_gpt2, task="mnli", method="splitfrozen",
                      partition="label-skew:1", split=1, epochs=1, train_samples=12, eval_samples=30, max_len=48,
                      data_dir=str(FIXTURES / "data"), out=str(tmp_path / "run"), progress=False))
    err = capsys.readouterr().err
    assert "warning: no training sample of class 2 (contradiction) on any device (partition label-skew:1, seed 0, " \
           "12 samples): the model cannot learn it" in err
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["absent_classes"] == [2] and len(saved["warnings"]) == 1
    assert saved["eval_f1"] is None and saved["eval_macro_f1"] == saved["eval_metrics"]["macro_f1"]
    assert saved["eval_metrics"]["accuracy"] == saved["eval_accuracy"] == m["eval_accuracy"]
    assert len(saved["eval_metrics_history"]) == 1
    from trainer.data.tasks import load_task

    dev = load_task("mnli", str(FIXTURES / "data"), "dev")
    assert saved["majority_baseline"] == majority_baseline(dev.labels[:30], 3)
    assert saved["majority_accuracy"] == saved["majority_baseline"]["accuracy"]
