"""Every Python block of docs/python.md, run against the hub (its `URL` swapped for the
hub's address): the documentation's snippets work as written."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "python.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_its_snippets():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(hub, index):
    code = BLOCKS[index].replace("ws://127.0.0.1:8080/ws", f"ws://{hub}/ws")
    assert f"ws://{hub}/ws" in code, "every snippet connects to URL"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "it printed what it received"
