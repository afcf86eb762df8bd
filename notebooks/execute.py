"""Execute the notebooks in place with a real kernel (nbclient), so the committed copies keep their outputs.

Usage (from the repository root, after ``make setup``)::

    .venv/bin/python notebooks/execute.py            # every notebook, full size
    .venv/bin/python notebooks/execute.py what_if    # one of them

Figures the notebooks save go to ``runs/`` (ignored by git); the outputs shown inline (tables, plots)
are written into the ``.ipynb`` itself. ``make notebooks`` runs this.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    """Run ``path`` top to bottom in its folder and save it with its outputs; returns the seconds taken."""
    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"]).execute()  # no kernel chatter
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)  # atomic: a failed run leaves the committed notebook as it was
    return time.perf_counter() - t0


def main(names: list[str]) -> int:
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(HERE.glob("*.ipynb"))
    for p in paths:
        if not p.is_file():
            print(f"notebooks/execute.py: no notebook {p.name} in {HERE}", file=sys.stderr)
            return 2
        print(f"{p.name}: executed in {execute(p):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
