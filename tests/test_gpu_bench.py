"""benchmarks/gpu_bench.sh end to end on the CPU (--device cpu --quick): one results file, every row measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_bench.sh"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| train") or line.startswith("| predict")]
    setups = {(r.split("|")[1].strip(), r.split("|")[3].strip()) for r in rows}
    assert {("train", "eager-fp32"), ("train", "unetkit"), ("predict", "unetkit bf16")} <= setups
    assert len(rows) == 2 * 2 + 3  # two training sizes x (eager, unetkit), prediction x (eager, unetkit, bf16)
    for r in rows:
        rate = r.split("|")[4].strip()
        assert float(rate.replace(",", "")) > 0, r  # measured, not skipped or failed
    assert "x |" in rows[1] and '"samples"' in text
    bad = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_bench.sh"), "--device", "cuda"] if not _cuda() else ["true"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert _cuda() or (bad.returncode != 0 and "--device cpu" in bad.stderr)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
