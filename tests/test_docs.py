"""The API reference pages build from the docstrings without a single Sphinx warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_sphinx_builds_the_api_pages_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                           str(DOCS), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "api.html").read_text()
    for name in ("subcell_scale.embed_plate", "subcell_scale.run", "RunParams", "evaluate_profiles", "postprocess",
                 "read_cells", "top_localization"):
        assert name in api, name
    assert "jump-cellpainting" in (tmp_path / "protocols.html").read_text()
