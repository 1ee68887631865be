"""Scale out: two gloo processes train like one, rank 0 alone writes, checkpoints cross world sizes,
the streaming loader yields the in-memory batches, and --nproc builds the torchrun command.

Tolerance of the 2-process vs 1-process comparison (fp32, compile off, dropout 0, same global batch
and seed): DDP averages the per-rank mean losses' gradients, which equals the gradient of the global
batch's mean when every rank holds the same number of pixels, so the two runs differ only in float
summation order. Measured here: max |difference| of any weight about 1e-7 after 4 Adam steps; the
test allows ATOL = 1e-5 (RTOL = 1e-4).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder

from unetkit import fit
from unetkit.config import DataConfig, RunConfig
from unetkit.data.loader import SegmentationData
from unetkit.data.stream import StreamingData, choose_cache, shard_order
from unetkit.distributed import free_port, local_batch_size, strip_option, torchrun_command
from unetkit.errors import ConfigError, DataError
from unetkit.run import load_tensors, read_metrics

ATOL, RTOL = 1e-5, 1e-4
REPO = Path(__file__).resolve().parents[1]


def _config(data: Path, **train) -> RunConfig:
    """A tiny U-Net, dropout off, reading the blob folders (16 training images, 5 for validation)."""
    cfg = tiny_config(**({"epochs": 2, "batch_size": 8} | train))
    return replace(
        cfg,
        model=replace(cfg.model, dropout=0.0),
        data=DataConfig(
            images=str(data / "train" / "images"),
            masks=str(data / "train" / "masks"),
            val_images=str(data / "val" / "images"),
            val_masks=str(data / "val" / "masks"),
            cache="memory",
        ),
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("blobs")
    write_folder(root / "train", *make_blobs(16, seed=3))
    write_folder(root / "val", *make_blobs(5, seed=4))  # odd: the validation shards differ in size
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(run / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=f"weight {k} differs")
        worst = max(worst, (a[k] - b[k]).abs().max().item())
    return worst


def _worker(rank: int, world: int, port: int, config_json: str, out: str, report: str) -> None:
    """One rank, started the way torchrun starts it: environment variables, then the normal fit()."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import unetkit.fsio as fsio

    written: list[str] = []
    real_write = fsio.atomic_write_bytes

    def spy(path, data):  # every file of the run folder goes through atomic_write_bytes
        written.append(Path(path).name)
        real_write(path, data)

    fsio.atomic_write_bytes = spy
    logged: list[str] = []
    config = RunConfig.from_dict(json.loads(config_json))
    result = fit(config, out, progress=False, log=logged.append)
    Path(report, f"rank{rank}.json").write_text(
        json.dumps({"written": written, "logged": logged, "best": result.best_miou})
    )


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    """2 epochs on two gloo processes and the same on one process (same config, seed, global batch)."""
    root = tmp_path_factory.mktemp("runs")
    config = _config(data_dir)
    report = root / "report"
    report.mkdir()
    torch.multiprocessing.spawn(
        _worker, args=(2, free_port(), config.to_json(), str(root / "ddp"), str(report)), nprocs=2
    )
    fit(config, root / "single", progress=False, log=None)
    shutil.copytree(root / "single", root / "single3")  # the reference continuation: 1 process, epoch 3
    fit(_more(config), root / "single3", resume=True, progress=False, log=None)
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]
    return {
        "config": config,
        "ddp": root / "ddp",
        "single": root / "single",
        "single3": root / "single3",
        "ranks": ranks,
    }


def _more(config: RunConfig, epochs: int = 3) -> RunConfig:
    return replace(config, train=replace(config.train, epochs=epochs))


def test_two_gloo_processes_train_like_one_and_only_rank0_writes(two_process_run):
    ranks, ddp, single = two_process_run["ranks"], two_process_run["ddp"], two_process_run["single"]
    assert ranks[1]["written"] == [] and ranks[1]["logged"] == []
    assert {"config.json", "last.safetensors", "weights.safetensors", "metrics.csv"} <= set(ranks[0]["written"])
    assert any("2 processes: global batch 8 = 4 per process" in m for m in ranks[0]["logged"])
    assert ranks[0]["best"] == ranks[1]["best"]  # validation metrics reduced over ranks: every rank agrees
    worst = _assert_close(_weights(ddp), _weights(single))
    print(f"max |w_2proc - w_1proc| = {worst:.3g}")
    rows_d, rows_s = read_metrics(ddp / "metrics.csv"), read_metrics(single / "metrics.csv")
    assert len(rows_d) == len(rows_s) == 2
    for rd, rs in zip(rows_d, rows_s):
        for key in ("train_loss", "val_loss"):
            assert rd[key] == pytest.approx(rs[key], rel=1e-4)
        for key in ("train_accuracy", "val_accuracy", "val_miou"):  # from all-reduced confusion matrices
            assert rd[key] == pytest.approx(rs[key], abs=1e-4)


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    ddp = tmp_path / "ddp"
    shutil.copytree(two_process_run["ddp"], ddp)
    fit(_more(two_process_run["config"]), ddp, resume=True, progress=False, log=None)
    assert [r["epoch"] for r in read_metrics(ddp / "metrics.csv")] == [1, 2, 3]
    _assert_close(_weights(ddp), _weights(two_process_run["single3"]))


def test_nproc_shortcut_resumes_a_one_process_run_on_two(two_process_run, tmp_path):
    """`unetkit train --resume RUN --nproc 2` (via `python -m unetkit`): torchrun, 2 CPU processes, rank 0 prints."""
    run = tmp_path / "run"
    shutil.copytree(two_process_run["single"], run)
    cmd = [
        sys.executable,
        "-m",
        "unetkit",
        "train",
        "--resume",
        str(run),
        "--epochs",
        "3",
        "--no-progress",
        "--nproc",
        "2",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=300
    )
    output = " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    assert proc.returncode == 0, output
    assert "torch.distributed.run --standalone --nproc_per_node 2 -m unetkit train --resume" in output
    assert "2 processes: global batch 8 = 4 per process" in output
    for line in ("resuming", "epoch 3/3", "done:"):
        assert output.count(line) == 1, output  # printed by rank 0 only
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]
    _assert_close(_weights(run), _weights(two_process_run["single3"]))


def test_torchrun_command_and_batch_split():
    argv = ["train", "--images", "a", "--nproc", "4", "--out", "r", "--nproc=3"]
    assert strip_option(argv, "--nproc") == ["train", "--images", "a", "--out", "r"]
    assert torchrun_command(argv, 4) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "unetkit",
        "train",
        "--images",
        "a",
        "--out",
        "r",
    ]
    assert local_batch_size(32, 4) == 8
    with pytest.raises(ConfigError, match="batch size 30 does not divide evenly over 4 processes"):
        local_batch_size(30, 4)


def test_nproc_option_launches_torchrun(monkeypatch, blob_folders, tmp_path):
    from typer.testing import CliRunner

    import unetkit.distributed as distributed
    from unetkit.cli import app

    calls = []
    images, masks = (str(p) for p in blob_folders)
    args = ["train", "--images", images, "--masks", masks, "--n-classes", "3", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["unetkit", *args, "--nproc", "2"])
    monkeypatch.setattr(
        distributed.subprocess, "run", lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 3)
    )
    result = CliRunner().invoke(app, [*args, "--nproc", "2"])  # the settings are checked before torchrun starts
    assert result.exit_code == 3  # torchrun's exit code is the command's
    assert calls == [torchrun_command(args, 2)]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_yields_the_in_memory_batches(data_dir, workers):
    images, masks = data_dir / "train" / "images", data_dir / "train" / "masks"
    memory, mode = SegmentationData.from_folders(images, masks, (32, 32, 3), n_classes=3)
    stream, stream_mode = StreamingData.from_folders(images, masks, (32, 32, 3), n_classes=3, num_workers=workers)
    assert stream_mode == mode and len(stream) == len(memory) and stream.nbytes == memory.nbytes
    for rank, world in ((0, 1), (1, 3)):
        a = list(
            memory.batches(
                4, device="cpu", shuffle=True, generator=torch.Generator().manual_seed(7), rank=rank, world_size=world
            )
        )
        b = list(
            stream.batches(
                4, device="cpu", shuffle=True, generator=torch.Generator().manual_seed(7), rank=rank, world_size=world
            )
        )
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xb.dtype == torch.uint8 and yb.dtype == torch.int64
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ta, va = memory.split(0.25, seed=1)
    tb, vb = stream.split(0.25, seed=1)
    assert torch.equal(next(vb.batches(8, device="cpu"))[0], va.images)
    assert torch.equal(tb.class_counts(3), ta.class_counts(3))


def test_stream_order_is_the_distributed_sampler_rule():
    gen = torch.Generator().manual_seed(0)
    full = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [
        shard_order(10, shuffle=True, generator=torch.Generator().manual_seed(0), rank=r, world_size=4)
        for r in range(4)
    ]
    assert all(len(s) == 3 for s in shards)  # 10 samples padded to 12
    padded = torch.cat([full, full[:2]])
    for r in range(4):
        assert torch.equal(shards[r], padded[r::4])
    assert torch.equal(shard_order(10, shuffle=True, generator=gen), full)


def test_streaming_reports_a_corrupt_file_cleanly(tmp_path):
    img_dir, mask_dir = write_folder(tmp_path, *make_blobs(4))
    (img_dir / "img2.png").write_bytes(b"not a png")
    stream, _ = StreamingData.from_folders(img_dir, mask_dir, (32, 32, 3), n_classes=3, num_workers=0)
    with pytest.raises(DataError, match="img2.png"):
        list(stream.batches(2, device="cpu"))


def test_cache_choice():
    assert choose_cache("memory", 10**15, budget=1) == "memory"
    assert choose_cache("stream", 1, budget=10**15) == "stream"
    assert choose_cache("auto", 100, budget=1000) == "memory"
    assert choose_cache("auto", 1001, budget=1000) == "stream"


def test_fit_streams_when_the_cache_would_not_fit(tmp_path, data_dir, monkeypatch):
    """cache="auto" streams over budget; streaming trains on the same batches as the memory cache, bit for bit."""
    import unetkit.data.stream as stream

    config = _config(data_dir, epochs=1)
    fit(config, tmp_path / "memory", progress=False, log=None)
    monkeypatch.setattr(stream, "MEMORY_FRACTION", 1e-9)  # no cache fits
    auto = replace(config, data=replace(config.data, cache="auto", num_workers=0))
    logged: list[str] = []
    fit(auto, tmp_path / "stream", progress=False, log=logged.append)
    assert any("over this process's budget" in m for m in logged)
    assert any(m.startswith("streaming 21 image/mask pairs") for m in logged)
    a, b = _weights(tmp_path / "stream"), _weights(tmp_path / "memory")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _choice_worker(rank: int, port: int, report: str) -> None:
    """Each rank measures a different answer; rank0_choice gives every rank rank 0's."""
    from unetkit.distributed import process_group, rank0_choice

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with process_group("cpu"):
        got = rank0_choice(rank == 1, torch.device("cpu"))  # rank 0 says False, rank 1 True
    Path(report, f"choice{rank}.json").write_text(json.dumps(got))


def test_a_measured_choice_is_rank0s_on_every_rank(tmp_path):
    from unetkit.distributed import rank0_choice

    assert rank0_choice(True, torch.device("cpu")) is True  # one process: its own answer
    torch.multiprocessing.spawn(_choice_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"choice{r}.json").read_text()) for r in range(2)] == [False, False]
