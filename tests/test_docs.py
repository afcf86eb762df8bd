"""Every README and docs/ snippet that runs in seconds does run: the Python blocks and the simulate/plan commands.

They run in a temporary folder that sees the repository's ``profiles/``, in page order (README first,
then the documentation pages; the quick tour's plan file feeds the next command), so nothing lands in
the repository. ``sfsim run``/``eval`` (minutes of training) and ``sfsim sweep`` (its own test in
test_sweep.py) are left out. Relative links in the README and the pages must point at files that exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
README = "\n".join(p.read_text() for p in PAGES)
CHEAP = ("simulate", "plan")


def _commands() -> list[str]:
    """``sfsim simulate|plan`` commands: lines of ```bash blocks and inline code, in README order."""
    found = []
    for m in re.finditer(r"```bash\n(.*?)```|`(sfsim [^`]+)`", README, re.S):
        if m.group(1) is not None:
            found += [ln for ln in m.group(1).replace("\\\n", " ").splitlines() if ln.startswith("sfsim ")]
        else:
            found.append(" ".join(m.group(2).split()))  # inline code may wrap
    return [c for c in found if shlex.split(c)[1] in CHEAP and "--devices" in c and "..." not in c]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_commands_and_python():
    cmds = _commands()
    assert len(cmds) >= 12 and any(c.startswith("sfsim plan") for c in cmds)
    assert re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_commands_run(sandbox):
    runner = CliRunner()
    for cmd in _commands():
        r = runner.invoke(main, shlex.split(cmd, comments=True)[1:])
        assert r.exit_code == 0, f"{cmd}\n{r.output}"
    for out in ("plan.yaml", "gantt.png", "trace.json", "all.pdf"):
        assert (sandbox / "runs" / out).stat().st_size > 0
    assert (sandbox / "runs" / "all.pdf").read_bytes()[:4] == b"%PDF"


def test_readme_python_runs(sandbox):
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102
    assert (sandbox / "runs" / "trace.json").is_file() and (sandbox / "runs" / "gantt.svg").is_file()


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_repository_paths_in_code_spans_exist():
    """A path such as `sfsim/cost/model.py` named in a page is a file or folder of the repository."""
    stale = []
    for page in PAGES:
        for path in re.findall(r"`((?:sfsim|trainer|bench|profiles|tests|notebooks)/[\w./-]+)`", page.read_text()):
            if not (ROOT / path).exists():
                stale.append(f"{page.relative_to(ROOT)}: {path}")
    assert not stale, stale
