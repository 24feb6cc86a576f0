"""The screen benchmark (``benchmarks/bench_screen.py``) runs every section on a tiny screen, and what it
measures holds there too: finished plates are found without a shard read, the store holds every cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.processes]

ROOT = Path(__file__).resolve().parents[1]


def test_a_tiny_screen_goes_through_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    script = ROOT / "benchmarks" / "bench_screen.py"
    args = ["--plates", "5", "--fields", "4", "--cells", "8", "--scheduler-fields", "16", "--workers", "1",
            "--root", str(tmp_path), "--json", str(tmp_path / "report.json")]
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    finished, half = report["resume"]
    assert (finished["shard_reads"], finished["fields_done"]) == (0, 20)  # no shard read for a finished plate
    assert half["shard_reads"] == 2 * 4 and half["fields_done"] == 20  # only the unfinished plates' shards
    assert [row["cells"] for row in report["memory"]["sizes"]] == [1 * 4 * 8, 5 * 4 * 8]
    assert all(row["failed"] == 0 and row["fields"] >= 16 for row in report["scheduler"])  # whole wells of fields
    assert "projection to cpg0016" in done.stdout
