"""A bounded load test of `unetkit serve` on loopback (benchmarks/load_test.py): zero errors, flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the server's RSS from /proc")
def test_load_zero_errors_and_memory_does_not_grow_across_rounds(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "load_test.py"),
            "--arch",
            "tiny",
            "--requests",
            "800",
            "--concurrency",
            "32",
            "--rounds",
            "3",
            "--max-seconds",
            "120",
            "--json",
            str(out),
        ],
        check=True,
        timeout=900,
    )
    rounds = json.loads(out.read_text())["rounds"]
    for r in rounds:
        assert r["errors"] == {} and r["ok"] == r["requests"] == 800, r
    # round 1 warms the allocator and the batcher; after it, resident memory stays flat
    growth = rounds[-1]["rss_after_mb"] - rounds[0]["rss_after_mb"]
    assert growth < 40, [(r["rss_before_mb"], r["rss_after_mb"]) for r in rounds]
