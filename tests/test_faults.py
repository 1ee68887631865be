"""Training faults: SIGKILL at random moments, Ctrl-C, a full disk, NaN/Inf losses, out of memory.

The kill tests run the real CLI (``unetkit train``) in a child process on tiny data and kill it with
SIGKILL, some of the time from inside a checkpoint write (the child kills itself at its N-th
``fsync`` in the run folder: a temporary file written but not yet renamed, or a file renamed but the
next one not yet written), the rest at random moments. After every kill the run folder must load,
the newest complete epoch must still be there, no file under a real name may be half-written, and
``--resume`` must end with exactly the weights and metrics of an uninterrupted run (deterministic CPU).
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder
from PIL import Image

import unetkit.fsio as fsio
import unetkit.run as runio
import unetkit.train as train_mod
from unetkit import SegmentationData, fit, load_run
from unetkit.errors import RunError
from unetkit.run import LAST, METRICS, WEIGHTS, load_tensors, read_metrics
from unetkit.train import NonFiniteLoss, TrainingInterrupted

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and POSIX signals")

REAL_NAMES = {"config.json", "weights.safetensors", "last.safetensors", "metrics.csv", "curves.png", "README.md"}

# The child: the unetkit CLI, one thread (deterministic and fair on a shared machine), optionally killing
# itself with SIGKILL at its N-th fsync of a file in the run folder (N = UNETKIT_TEST_KILL_AT_FSYNC).
CHILD = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
kill_at = int(os.environ.get("UNETKIT_TEST_KILL_AT_FSYNC") or 0)
run_dir = os.path.realpath(os.environ["UNETKIT_TEST_RUN_DIR"])
if kill_at:
    real_fsync, count = os.fsync, [0]
    def fsync(fd):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(run_dir):
            count[0] += 1
            if count[0] == kill_at:
                sys.stdout.write(f"KILLING at fsync {kill_at} of {target}\n")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)
    os.fsync = fsync
from unetkit.cli import main
sys.argv = ["unetkit", *sys.argv[1:]]
main()
"""


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as in the children: on a busy 2-core machine two threads spin-wait (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Child:
    """A ``unetkit train`` child process whose output is collected by a thread."""

    def __init__(self, script: Path, args: list[str], run: Path, kill_at_fsync: int = 0):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            UNETKIT_TEST_RUN_DIR=str(run),
            UNETKIT_TEST_KILL_AT_FSYNC=str(kill_at_fsync),
            COLUMNS="200",
            PYTHONUNBUFFERED="1",
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                return any(text in line for line in self.lines)
            time.sleep(0.02)
        return False

    def wait(self, timeout: float = 240) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _train_args(data: Path, run: Path, epochs: int) -> list[str]:
    return [
        "train",
        "--images",
        str(data / "images"),
        "--masks",
        str(data / "masks"),
        "--n-classes",
        "3",
        "--input-size",
        "32",
        "32",
        "--n-filters",
        "4",
        "--batch-size",
        "4",
        "--epochs",
        str(epochs),
        "--val-fraction",
        "0.25",
        "--precision",
        "fp32",
        "--no-compile",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(run),
    ]


def _resume_args(run: Path, epochs: int) -> list[str]:
    return ["train", "--resume", str(run), "--epochs", str(epochs), "--no-progress"]


@pytest.fixture
def kill_setup(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = make_blobs(16, seed=5)
    write_folder(tmp_path / "data", images, masks)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script, tmp_path / "data"


def _committed_epoch(run: Path) -> int:
    """The epoch last.safetensors holds (0 before the first one), checking that the folder is whole."""
    names = {p.name for p in run.iterdir()}
    temps = {n for n in names if n.startswith(".") and n.endswith(".tmp")}
    assert names - temps <= REAL_NAMES, f"unexpected files {names - temps - REAL_NAMES}"
    for name in temps:  # only the atomic writer's own temporary names: .NAME.PID.RANDOM.tmp
        parts = name.split(".")
        assert parts[1:-3] and ".".join(parts[1:-3]) in REAL_NAMES and parts[-3].isdigit(), name
    if "config.json" in names:
        json.loads((run / "config.json").read_text())  # whole JSON, never a torn write
    if "curves.png" in names:
        with Image.open(run / "curves.png") as im:
            im.load()
    if LAST not in names:  # no epoch committed yet (weights.safetensors may hold the uncommitted first one)
        return 0
    _, meta = load_tensors(run / LAST)
    epoch = meta["epoch"]
    _, best_meta = load_tensors(run / WEIGHTS)
    assert 1 <= best_meta["epoch"]
    rows = read_metrics(run / METRICS)
    # last.safetensors is the commit point, written after metrics.csv: the csv holds every committed epoch
    # and at most one more, which the next run recomputes.
    assert epoch <= len(rows) <= epoch + 1, (epoch, len(rows))
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    run_obj = load_run(run)  # loads (best weights), and so do the last ones
    assert len(run_obj.metrics) == len(rows)
    load_run(run, weights="last")
    return epoch


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / METRICS).open(newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_run(a: Path, b: Path) -> None:
    ta, ma = load_tensors(a / LAST)
    tb, mb = load_tensors(b / LAST)
    assert ta.keys() == tb.keys()
    for k in ta:  # weights, optimizer state and RNG state, bit for bit
        assert torch.equal(ta[k], tb[k]), k
    assert ma == mb
    wa, _ = load_tensors(a / WEIGHTS)
    wb, _ = load_tensors(b / WEIGHTS)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    timing = {"seconds", "images_per_s"}
    ra = [{k: v for k, v in r.items() if k not in timing} for r in _rows(a)]
    rb = [{k: v for k, v in r.items() if k not in timing} for r in _rows(b)]
    assert ra == rb


def _restart_args(data: Path, run: Path, epochs: int) -> list[str]:
    """Start again where no epoch was committed: a kill may have left a config (and weights) there already."""
    args = _train_args(data, run, epochs)
    return [*args, "--overwrite"] if run.exists() else args


def _kill_and_resume(
    script: Path, data: Path, tmp: Path, epochs: int, plan: list[str], seed: int, max_delay: float = 2.5
) -> dict[str, int]:
    """Run the plan of kills ("fsync" or "random"), resume after each, finish; compare with a clean run."""
    rng = random.Random(seed)
    reference = Child(script, _train_args(data, tmp / "reference", epochs), tmp / "reference")  # in parallel
    run = tmp / "run"
    stats = {"kills": 0, "in_write": 0, "between_files": 0, "at_random": 0, "progress_epochs": 0}
    before = 0
    for i, how in enumerate(plan):
        args = _resume_args(run, epochs) if (run / LAST).exists() else _restart_args(data, run, epochs)
        if how == "fsync":  # inside a checkpoint write: config.json is 2 fsyncs, an epoch 6 to 8
            child = Child(script, args, run, kill_at_fsync=rng.randint(3, 14))
        else:
            child = Child(script, args, run)
            assert child.wait_for("training unet", 120), child.output
            time.sleep(rng.uniform(0.0, max_delay))
            child.proc.send_signal(signal.SIGKILL)
        code = child.wait()
        if code == 0:  # finished before the kill landed: nothing to check beyond a whole folder
            assert _committed_epoch(run) == epochs
            break
        assert code == -signal.SIGKILL, child.output
        stats["kills"] += 1
        if how == "fsync":  # killed before a file's fsync (temporary file written, not renamed) or after a rename
            stats["in_write" if ".tmp" in child.output.split("KILLING")[-1] else "between_files"] += 1
        else:
            stats["at_random"] += 1
        epoch = _committed_epoch(run)
        assert epoch >= before, f"kill {i + 1} lost epochs: {before} -> {epoch}"
        stats["progress_epochs"] += epoch - before
        before = epoch
    final = Child(script, _resume_args(run, epochs) if (run / LAST).exists() else _restart_args(data, run, epochs), run)
    assert final.wait() == 0, final.output
    assert reference.wait() == 0, reference.output
    assert _committed_epoch(run) == epochs
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"
    assert len(read_metrics(run / METRICS)) == epochs
    _assert_same_run(tmp / "reference", run)
    print(f"\nkill test (seed {seed}): {stats}")
    return stats


def test_sigkill_during_checkpoints_and_at_random_resumes_exactly(kill_setup, tmp_path):
    script, data = kill_setup
    stats = _kill_and_resume(script, data, tmp_path, epochs=5, plan=["fsync", "random", "fsync"], seed=8)
    assert stats["kills"] >= 2


@pytest.mark.slow
def test_many_sigkills_resume_exactly(kill_setup, tmp_path):
    script, data = kill_setup
    seed = int(os.environ.get("UNETKIT_KILL_SEED", "1"))
    plan = ["fsync" if i % 2 else "random" for i in range(int(os.environ.get("UNETKIT_KILLS", "12")))]
    epochs = int(os.environ.get("UNETKIT_KILL_EPOCHS", "20"))
    stats = _kill_and_resume(script, data, tmp_path, epochs=epochs, plan=plan, seed=seed, max_delay=1.0)
    assert stats["kills"] >= len(plan) // 2


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_resumes(kill_setup, tmp_path):
    script, data = kill_setup
    run = tmp_path / "run"
    child = Child(script, _train_args(data, run, 50), run)
    assert child.wait_for("epoch 1/50", 120), child.output  # one epoch saved
    child.proc.send_signal(signal.SIGINT)
    code = child.wait()
    assert code == 130, child.output
    out = " ".join(child.output.split())
    assert "Traceback" not in out
    assert f"--resume {run}" in out and "interrupted during epoch" in out
    epoch = _committed_epoch(run)
    assert 1 <= epoch < 50 and len(read_metrics(run / METRICS)) == epoch  # the interrupted epoch is not written
    resumed = Child(script, _resume_args(run, epoch + 1), run)
    assert resumed.wait() == 0, resumed.output
    assert _committed_epoch(run) == epoch + 1


# ---------------------------------------------------------------- in-process faults (fast, no subprocess)


@pytest.fixture(scope="module")
def tiny_data() -> SegmentationData:
    images, masks = make_blobs(16, seed=3)
    return SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)


def test_ctrl_c_in_process_abandons_the_step_and_keeps_finished_epochs(tmp_path, tiny_data):
    def press_ctrl_c(row: dict) -> None:
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the guard turns it into a flag checked before the next step

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match=r"during epoch 3: 2 finished epoch\(s\).*--resume") as e:
        fit(
            tiny_config(epochs=5),
            tmp_path / "run",
            train_data=tiny_data,
            progress=False,
            log=None,
            epoch_callback=press_ctrl_c,
        )
    assert e.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is handler  # the guard put the previous handler back
    assert load_tensors(tmp_path / "run" / LAST)[1]["epoch"] == 2
    assert len(read_metrics(tmp_path / "run" / METRICS)) == 2


def test_ctrl_c_in_the_first_epoch_says_there_is_nothing_to_resume(tmp_path, tiny_data, monkeypatch):
    calls = []
    real = train_mod.to_float

    def to_float(x, *args):  # the first step presses Ctrl-C
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(1)
        return real(x, *args)

    monkeypatch.setattr(train_mod, "to_float", to_float)
    with pytest.raises(TrainingInterrupted, match="nothing to resume; run the same command again"):
        fit(tiny_config(epochs=2), tmp_path / "run", train_data=tiny_data, progress=False, log=None)
    assert len(calls) == 1  # the step in flight finished, the next one never started


class _DiskFull:
    """Wraps fsio.atomic_write_bytes: raise ENOSPC on the first write of ``name`` once ``after`` epochs are saved."""

    def __init__(self, name: str, after: int = 1):
        self.name, self.after, self.real, self.fired = name, after, fsio.atomic_write_bytes, False

    def __call__(self, path, data) -> None:
        run = Path(path).parent
        committed = load_tensors(run / LAST)[1]["epoch"] if (run / LAST).exists() else 0
        if not self.fired and Path(path).name == self.name and committed >= self.after:
            self.fired = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.real(path, data)


@pytest.mark.parametrize("name", ["weights.safetensors", "metrics.csv", "last.safetensors"])
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_data, monkeypatch, name):
    run = tmp_path / "run"
    full = _DiskFull(name)
    monkeypatch.setattr(fsio, "atomic_write_bytes", full)
    real_save = train_mod._Checkpointer.save
    monkeypatch.setattr(
        train_mod._Checkpointer,
        "save",  # every epoch counts as best: weights are written
        lambda self, model, opt, state, is_best: real_save(self, model, opt, state, True),
    )
    with pytest.raises(RunError) as e:
        fit(tiny_config(epochs=3), run, train_data=tiny_data, progress=False, log=None)
    assert full.fired
    message = str(e.value)
    assert str(run) in message and "No space left on device" in message
    assert f"unetkit train --resume {run}" in message and "previous checkpoint is intact" in message
    assert _committed_epoch(run) == 1  # epoch 1 is whole and loads
    monkeypatch.undo()
    fit(tiny_config(epochs=3), run, train_data=tiny_data, resume=True, progress=False, log=None)
    assert _committed_epoch(run) == 3 and len(read_metrics(run / METRICS)) == 3


def test_failing_fsync_leaves_no_temporary_file_and_the_old_file(tmp_path, tiny_data, monkeypatch):
    run = tmp_path / "run"
    fit(tiny_config(epochs=1), run, train_data=tiny_data, progress=False, log=None)
    before = (run / LAST).read_bytes()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while last.safetensors is being written
        if ".last.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(fsio.os, "fsync", fsync)
    with pytest.raises(RunError, match="could not write the checkpoint.*No space left on device"):
        fit(tiny_config(epochs=2), run, train_data=tiny_data, resume=True, progress=False, log=None)
    monkeypatch.undo()
    assert (run / LAST).read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_run_folder_is_a_clear_error(tmp_path, tiny_data, monkeypatch):
    def no_space(path, data) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(fsio, "atomic_write_bytes", no_space)
    with pytest.raises(RunError, match=r"could not write .*config\.json \(No space left on device\)"):
        fit(tiny_config(epochs=1), tmp_path / "run", train_data=tiny_data, progress=False, log=None)


def test_stale_temporary_files_of_a_dead_writer_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".last.safetensors.{dead}.abc123.tmp"
    mine = tmp_path / f".metrics.csv.{os.getpid()}.xyz.tmp"
    other = tmp_path / ".notes.tmp"
    for p in (stale, mine, other):
        p.write_bytes(b"partial")
    assert fsio.remove_stale_temps(tmp_path) == [stale]
    assert mine.exists() and other.exists()


def _poison(monkeypatch, at_call: int, how: str) -> list[int]:
    """Make the training step number ``at_call`` (1-based, over the run) produce a NaN or Inf loss."""
    calls: list[int] = []
    if how == "nan-input":  # a batch whose image holds NaN (uint8 data cannot: poison it after scaling)
        real = train_mod.to_float

        def to_float(x, *args):
            calls.append(1)
            out = real(x, *args)
            if len(calls) == at_call:
                out = out.clone()
                out[0, 0, 0, 0] = float("nan")
            return out

        monkeypatch.setattr(train_mod, "to_float", to_float)
        return calls
    real_loss_fn = train_mod._loss_fn

    def loss_fn(*args, **kwargs):
        inner = real_loss_fn(*args, **kwargs)

        def poisoned(logits, target):
            loss = inner(logits, target)
            if logits.requires_grad:
                calls.append(1)
                if len(calls) == at_call:
                    return loss * float("inf") if how == "inf-loss" else loss * float("nan")
            return loss

        return poisoned

    monkeypatch.setattr(train_mod, "_loss_fn", loss_fn)
    return calls


@pytest.mark.parametrize("how", ["nan-loss", "inf-loss", "nan-input"])
def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_data, monkeypatch, how
):
    run = tmp_path / "run"
    _poison(monkeypatch, at_call=4, how=how)  # 16 images, batch 8: epoch 2, step 2
    with pytest.raises(NonFiniteLoss, match=r"at epoch 2, step 2; the last good checkpoint in .* is kept") as e:
        fit(tiny_config(epochs=3), run, train_data=tiny_data, progress=False, log=None)
    assert "--nan-policy skip" in str(e.value)
    assert _committed_epoch(run) == 1
    weights = load_run(run, weights="last").model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("how", ["nan-loss", "nan-input"])
def test_nan_policy_skip_skips_the_step(tmp_path, tiny_data, monkeypatch, how):
    run = tmp_path / "run"
    calls = _poison(monkeypatch, at_call=4, how=how)
    logged: list[str] = []
    config = tiny_config(epochs=3, nan_policy="skip")
    result = fit(config, run, train_data=tiny_data, progress=False, log=logged.append)
    assert any("skipped step 2 of epoch 2: loss is nan" in m for m in logged), logged
    assert len(calls) >= 6 and len(result.history) == 3 and _committed_epoch(run) == 3
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())


@pytest.mark.parametrize("batch, hint", [(["--batch-size", "8"], "try --batch-size 4"), ([], "lower --batch-size")])
def test_cuda_out_of_memory_suggests_a_smaller_batch(blob_folders, tmp_path, monkeypatch, batch, hint):
    from typer.testing import CliRunner

    from unetkit.cli import app

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total "
            "capacity; 5.12 GiB already allocated)"
        )

    monkeypatch.setattr(train_mod, "fit", oom)
    images, masks = blob_folders
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--n-classes",
            "3",
            "--input-size",
            "32",
            "32",
            "--out",
            str(tmp_path / "run"),
            *batch,
        ],
    )
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "ran out of memory" in out and hint in out and "Traceback" not in out
    assert isinstance(torch.OutOfMemoryError("x"), RuntimeError)


def test_resume_of_a_damaged_last_checkpoint_is_a_run_error(tmp_path, tiny_data):
    run = tmp_path / "run"
    fit(tiny_config(epochs=1), run, train_data=tiny_data, progress=False, log=None)
    tensors, meta = load_tensors(run / LAST)
    broken = {
        "no best": (tensors, {k: v for k, v in meta.items() if k != "best"}),
        "no rng": ({k: v for k, v in tensors.items() if k != "rng.cpu"}, meta),
        "wrong shape": ({k: (v[:1] if k.startswith("model.") and v.dim() else v) for k, v in tensors.items()}, meta),
        "meta not a dict": (tensors, [1, 2]),
    }
    for what, (t, m) in broken.items():
        runio.save_tensors(run / LAST, t, m)
        with pytest.raises(RunError, match="last.safetensors"):
            fit(tiny_config(epochs=2), run, train_data=tiny_data, resume=True, progress=False, log=None)
        print(what, "-> RunError")
    (run / LAST).write_bytes(runio.st_save({"x": torch.zeros(1)}, metadata={"unetkit": "{not json"}))
    with pytest.raises(RunError, match="not a readable safetensors file"):
        fit(tiny_config(epochs=2), run, train_data=tiny_data, resume=True, progress=False, log=None)


def test_deterministic_mode_is_bitwise_reproducible(tiny_data):
    """The premise of the kill test: two runs from the same seed agree bit for bit on the CPU."""
    a = fit(tiny_config(epochs=1), None, train_data=tiny_data, progress=False, log=None)
    b = fit(tiny_config(epochs=1), None, train_data=tiny_data, progress=False, log=None)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
