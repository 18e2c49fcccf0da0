"""The guide's examples run, so the docs cannot drift from the code.

In a page of docs/guide/, a ```python block titled `title="tasks.py"` is a file (the module a worker
imports); the untitled ```python blocks are one client script, run in order against a real
`minique -A tasks worker` on a private Redis (MINIQUE_BROKER_URL stands in for the URL the example
shows). Pages in COMPILE_ONLY are only compiled (their examples need more than one worker and a
client: beat, for one, is tested in tests/test_beat.py).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
BLOCK = re.compile(r'^```python(?: title="(?P<title>[^"]+)")?\n(?P<code>.*?)^```$', re.M | re.S)
COMPILE_ONLY = {"beat.md"}


def blocks(page: Path) -> list:
    return [(m["title"], m["code"]) for m in BLOCK.finditer(page.read_text())]


def test_every_guide_page_has_examples_and_they_compile():
    pages = sorted(GUIDE.glob("*.md"))
    assert len(pages) >= 5
    for page in pages:
        found = blocks(page)
        assert found, f"{page.name} has no python example"
        for title, code in found:
            compile(code, f"{page.name}:{title or 'client'}", "exec")


@pytest.mark.parametrize("page", sorted(p.name for p in GUIDE.glob("*.md") if p.name not in COMPILE_ONLY))
def test_the_examples_of_a_guide_page_run(page, procs, tmp_path):
    found = blocks(GUIDE / page)
    files = {title: code for title, code in found if title}
    client = "\n".join(code for title, code in found if not title)
    assert "tasks.py" in files and client, f"{page}: a tasks.py block and client blocks"
    where = tmp_path / "example"
    where.mkdir()
    for name, code in files.items():
        (where / name).write_text(code)
    procs.worker("-c", "2", app="tasks", cwd=where)
    run = subprocess.run([sys.executable, "-c", client], cwd=where, env=procs.env(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, f"{page}'s examples failed:\n{run.stdout}\n{run.stderr}"
