"""The what-if notebook runs as a user would run it (nbclient, a real kernel), writing only into a temporary
folder; the committed copy keeps its outputs (tables and figures visible when browsing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "what_if.ipynb"


def test_committed_notebook_has_its_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # uplink sweep, plan Gantt
    assert not [o for o in outputs if o["output_type"] == "error"]


def test_what_if_notebook_runs(monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("SFSIM_OUT", str(tmp_path))  # figures into the test's folder, not the repository
    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on a cell error
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan_gantt.png", "uplink_sweep.png"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "12 devices; gpt2 12 blocks" in text and "splitfrozen-sequential" in text and "plan for" in text
