"""The what-if notebook runs top to bottom against the current API (no Jupyter needed)."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "what_if.ipynb"


def test_what_if_notebook_runs(monkeypatch, tmp_path):
    nb = json.loads(NOTEBOOK.read_text())
    monkeypatch.chdir(NOTEBOOK.parent)
    monkeypatch.setenv("SFSIM_OUT", str(tmp_path))  # figures into the test's folder, not the repository
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}", "exec"), scope)  # noqa: S102
    assert scope["p"].makespan_s > 0 and len(scope["curves"]["splitfrozen"]) == len(scope["scales"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan_gantt.png", "uplink_sweep.png"]
