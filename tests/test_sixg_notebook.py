"""The 6G study notebook runs as a user would run it (nbclient, a real kernel), at small sizes, writing
only into a temporary folder; the committed copy keeps its outputs (figures visible when browsing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sixg_study.ipynb"


def test_committed_notebook_has_its_figures():
    nb = json.loads(NOTEBOOK.read_text())
    images = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) == 6
    assert not [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if o["output_type"] == "error"]


def test_sixg_notebook_runs_small(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("SFSIM_OUT", str(tmp_path))
    monkeypatch.setenv("SFSIM_SMALL", "1")
    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on a cell error
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before  # nothing written next to it
    assert {p.name for p in tmp_path.iterdir()} >= {"servers.csv", "servers.png", "backhaul_uplink.png",
                                                    "sync_mode.png", "energy.png", "handover.png", "churn.png"}
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "servers: 3 rows" in text and "backhaul_uplink: 6 rows" in text and "0 errors" in text
    assert "handover: 3 rows" in text and "churn: 12 rows" in text and " 0 micro-batches moved" in text
