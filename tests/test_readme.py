"""The README's quick start runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.rst"


@pytest.mark.skipif(not README.exists(), reason="README.rst is not shipped in wheels")
def test_quick_start_runs(capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"Quick start\n-+\n\n\.\. code-block:: python\n\n(.*?)\n\S", text, re.S)
    code = "\n".join(line[4:] for line in block.group(1).splitlines())
    exec(compile(code, "README.rst", "exec"), {})
    printed = capsys.readouterr().out
    variance = float(re.search(r"variance explained: ([0-9.]+)", printed).group(1))
    recovered = float(re.search(r"atoms recovered: ([0-9.]+)", printed).group(1))
    assert variance > 0.9 and recovered > 0.8
