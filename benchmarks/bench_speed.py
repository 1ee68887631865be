"""Speed of unetkit against the seed's own Keras code, on the same work, measured in one run.

One command, a few minutes on a 2-core CPU:

    python benchmarks/bench_speed.py                  # CPU: 96x128, batch 32; plus `unetkit train` end to end
    python benchmarks/bench_speed.py --sizes all      # also 96x128 batch 256 and 384x480 batch 16 (GPU sizes)
    python benchmarks/bench_speed.py --ablation       # unetkit's fast paths, each switched off in turn
    python benchmarks/bench_speed.py --quick          # a smoke run (about a minute; noisy figures)

What is measured, per size (input H x W, batch B, 23 classes, random data):

- Keras reference (``benchmarks/keras_reference.py``, the backend from KERAS_BACKEND, default TensorFlow),
  run as a Keras user runs it: ``compile_seed`` then ``model.fit`` on in-memory float arrays (timed from
  the start to the end of each epoch by a callback, so fit's set-up is left out), and ``model.predict``
  then ``argmax`` on the host.
- unetkit: training steps as ``fit()`` takes them, through its own ``train.train_one_epoch`` (batches
  drawn from the uint8 cache on the device, scaled there, forward under its precision, cross-entropy,
  backward, Adam step, loss and confusion matrix accumulated on the device), with unetkit's defaults
  (precision auto, channels-last, compile auto); prediction through ``Predictor.predict_array`` on uint8
  images: class-id masks back on the host.
- Training images/s counts full optimizer steps; prediction images/s counts masks delivered.
- CPU-s/img: the worker's CPU time (all its threads, user + system) per image. On a machine busy with
  other work this moves much less than images/s, so it shows which side does less work per image; on a
  quiet machine images/s is the figure that counts.
- Peak memory: the worker's peak RSS (data, framework and model together) and, on a GPU, the peak
  allocated device memory during the measurements.

Each side runs in its own worker process (threads and memory do not mix), started once and warmed up
(graph tracing, torch.compile, cuDNN autotuning), then the two are measured in turn, round after round,
while the other waits idle: each figure is the median over ``--repeats`` rounds, and the ratio is
unetkit / reference from the same rounds. /proc/loadavg is printed next to each table: on a busy
machine the absolute figures move, the interleaved ratios much less.

End to end (``--e2e``, on by default on the first size): writes ``--e2e-images`` synthetic driving
scenes as PNG files, runs ``unetkit train`` on that folder (PNG decoding, the validation split and
pass, checkpoints and the process start included) and compares its images/s (training images x epochs
/ wall time of the whole command) with the training-loop figure measured just before and after.

Results go to ``benchmarks/results/speed-<device>-<time>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TAG = "@@BENCH "
N_CLASSES = 23
CPU_SIZES = [(96, 128, 32)]
GPU_SIZES = [(96, 128, 256), (384, 480, 16)]
ALL_SIZES = [(96, 128, 32), (96, 128, 256), (384, 480, 16)]


# ----------------------------------------------------------------------------------------------- workers


def _reply(kind: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(TAG + json.dumps({"kind": kind} | payload) + "\n")
    sys.stdout.flush()


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class KerasWorker:
    """The seed's Keras model, compiled and fed as the tutorial does."""

    name = "keras"

    def __init__(self, h: int, w: int, batch: int, steps: int, predict_batches: int, seed: int = 0):
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX: share the GPU with the other side
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        sys.path.insert(0, str(HERE))
        import keras
        import numpy as np

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        from keras_reference import compile_seed, unet_model

        keras.utils.set_random_seed(seed)
        self.np = np
        self.batch = batch
        self.model = compile_seed(unet_model((h, w, 3), 32, N_CLASSES))
        rng = np.random.default_rng(seed)
        self.x = rng.random((steps * batch, h, w, 3), dtype=np.float32)
        self.y = rng.integers(0, N_CLASSES, (steps * batch, h, w, 1), dtype=np.int32)
        self.px = rng.random((predict_batches * batch, h, w, 3), dtype=np.float32)
        self.backend = keras.backend.backend()
        self.version = keras.__version__
        self._epoch: list[float] = []
        worker = self

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                worker._epoch = [time.perf_counter(), time.process_time()]

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                worker._epoch += [time.perf_counter(), time.process_time()]

        self.timer = EpochTimer()

    def warm_up(self) -> None:
        self.model.fit(self.x[: 2 * self.batch], self.y[: 2 * self.batch], batch_size=self.batch, epochs=1, verbose=0)
        self.model.predict(self.px[: self.batch], batch_size=self.batch, verbose=0)

    def train(self) -> dict[str, Any]:
        self.model.fit(self.x, self.y, batch_size=self.batch, epochs=1, verbose=0, shuffle=True, callbacks=[self.timer])
        t0, c0, t1, c1 = self._epoch
        return {"images": len(self.x), "seconds": t1 - t0, "cpu_s": c1 - c0}

    def predict(self) -> dict[str, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        masks = self.np.argmax(self.model.predict(self.px, batch_size=self.batch, verbose=0), axis=-1)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert masks.shape == self.px.shape[:3]
        return {"images": len(self.px), "seconds": seconds, "cpu_s": cpu}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rss_peak": _rss_bytes(),
            "framework": f"keras {self.version} ({self.backend})",
            "gpu": False,
        }
        try:
            if self.backend == "tensorflow":
                import tensorflow as tf

                if tf.config.list_physical_devices("GPU"):
                    out["gpu"] = True
                    out["device_peak"] = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            elif self.backend == "jax":
                import jax

                dev = jax.local_devices()[0]
                if dev.platform == "gpu":
                    out["gpu"] = True
                    out["device_peak"] = dev.memory_stats().get("peak_bytes_in_use")
            elif self.backend == "torch":
                import torch

                if torch.cuda.is_available():
                    out["gpu"] = True
                    out["device_peak"] = torch.cuda.max_memory_allocated()
        except Exception:  # memory statistics are best effort on every backend
            pass
        out["framework"] += ", GPU" if out["gpu"] else ", CPU"
        return out


class UnetkitWorker:
    """unetkit's training loop (as fit() runs it) and Predictor, with unetkit's defaults unless told."""

    name = "unetkit"

    def __init__(
        self,
        h: int,
        w: int,
        batch: int,
        steps: int,
        predict_batches: int,
        seed: int = 0,
        precision: str = "auto",
        compile: str = "auto",
        channels_last: bool = True,
        convt: str = "auto",
        optimizer_impl: str = "auto",
        subpixel_kernel: str = "matmul",
        compile_mode: str = "default",
        device: str = "auto",
        predict_compile: bool = False,
        tune: bool = True,
    ):
        import numpy as np
        import torch

        from unetkit import perf
        from unetkit.config import ModelConfig, RunConfig, TrainConfig
        from unetkit.data.loader import SegmentationData
        from unetkit.device import resolve_device, resolve_precision
        from unetkit.model import ConvTranspose2dSame
        from unetkit.predict import Predictor
        from unetkit.run import build_model
        from unetkit.train import _loss_fn, build_optimizer, resolve_compile, train_one_epoch

        self.torch, self.np = torch, np
        ConvTranspose2dSame.subpixel = {"auto": None, "subpixel": True, "native": False}[convt]
        if subpixel_kernel == "index":  # the ablation's reference: the sub-pixel kernel as it was gathered before
            import unetkit.model

            unetkit.model.subpixel_conv_transpose = _subpixel_by_index
        self.device = resolve_device(device)
        if self.device.type == "cpu" and tune:
            perf.tune_cpu()  # as fit() and Predictor do
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as fit() does
        self.config = RunConfig(
            model=ModelConfig(input_size=(h, w, 3), n_classes=N_CLASSES),
            train=TrainConfig(
                batch_size=batch,
                precision=precision,
                compile=compile,
                channels_last=channels_last,
                device=device,
                seed=seed,
            ),
        )
        self.dtype = resolve_precision(precision, self.device)
        torch.manual_seed(seed)
        model = build_model(self.config.model).to(self.device)
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=self.memory)
        self.model = model
        self.opt = build_optimizer(model, self.config)
        if optimizer_impl != "auto":  # the ablation's other Adam implementation
            kwargs = {"foreach": optimizer_impl == "foreach", "fused": optimizer_impl == "fused"}
            self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, **kwargs)
        self.compiled = resolve_compile(compile, self.device)
        self.step_model = torch.compile(model, mode=compile_mode) if self.compiled else model
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (steps * batch, h, w, 3), dtype=np.uint8)
        masks = rng.integers(0, N_CLASSES, (steps * batch, h, w), dtype=np.uint8)
        data = SegmentationData(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks))
        if self.device.type == "cuda":
            data = data.to(self.device)  # fit() moves the cache to the GPU when it fits
        self.data = data
        self.loss_fn = _loss_fn(self.config, data, self.device)
        self.train_one_epoch = train_one_epoch
        self.predictor = Predictor(model, self.config, device=self.device, precision=precision)
        if predict_compile:
            self.predictor.model = torch.compile(model, mode=compile_mode)
        self.predict_images = rng.integers(0, 256, (predict_batches * batch, h, w, 3), dtype=np.uint8)
        self.batch, self.epoch = batch, 0
        self.framework = (
            f"torch {torch.__version__}, {'bf16' if self.dtype else 'fp32'}, "
            f"{'channels-last' if channels_last else 'NCHW'}, compile {'on' if self.compiled else 'off'}"
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _steps(self, limit: int | None = None) -> int:
        """One epoch (or its first ``limit`` steps) of fit()'s own step, ``train.train_one_epoch``: the
        learning rate set, the batch scaled, forward, loss, backward, optimizer step, loss and confusion
        matrix accumulated on the device and read back once at the end."""
        stats = self.train_one_epoch(
            self.step_model,
            self.opt,
            self.data,
            self.loss_fn,
            self.config,
            epoch=self.epoch,
            device=self.device,
            dtype=self.dtype,
            batch_size=self.batch,
            max_steps=limit,
        )
        self.epoch += 1
        return stats["images"]

    def warm_up(self) -> None:
        self._steps(limit=3)  # compile (forward and backward), cuDNN autotuning, allocator pools
        self.predictor.predict_array(self.predict_images[: self.batch], batch_size=self.batch)
        self._sync()

    def train(self) -> dict[str, Any]:
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        seen = self._steps()
        self._sync()
        return {"images": seen, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    def predict(self) -> dict[str, Any]:
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        masks = self.predictor.predict_array(self.predict_images, batch_size=self.batch)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert masks.shape == self.predict_images.shape[:3] and masks.dtype == self.np.uint8
        return {"images": len(masks), "seconds": seconds, "cpu_s": cpu}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rss_peak": _rss_bytes(),
            "framework": self.framework,
            "threads": self.torch.get_num_threads(),
        }
        if self.device.type == "cuda":
            out["device_peak"] = self.torch.cuda.max_memory_allocated()
            out["device_name"] = self.torch.cuda.get_device_name()
        return out


def _subpixel_by_index(x: Any, weight: Any, bias: Any, select: Any = None) -> Any:
    """``unetkit.model.subpixel_conv_transpose`` as it was before 2026-12-03: the 2x2 kernel gathered by an
    index into the taps, then a transposing copy to (4 x out, in, 2, 2); the ablation's reference."""
    import torch
    import torch.nn.functional as F

    from unetkit.model import _subpixel_taps

    cin, cout = weight.shape[:2]
    flat = torch.cat([weight.reshape(cin, cout, 9), weight.new_zeros(cin, cout, 1)], dim=2)
    kernel = flat[:, :, _subpixel_taps().to(weight.device).reshape(-1)].reshape(cin, cout, 4, 2, 2)
    kernel = kernel.permute(2, 1, 0, 3, 4).reshape(4 * cout, cin, 2, 2)
    y = F.conv2d(F.pad(x, (1, 0, 1, 0)), kernel, bias.repeat(4) if bias is not None else None)
    n, _, h, w = y.shape
    out = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(n, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)


def worker_main(args: argparse.Namespace) -> None:
    """Serve commands (warm, train, predict, stats, quit) from stdin; results as tagged JSON lines."""
    kwargs = dict(
        h=args.size[0], w=args.size[1], batch=args.batch, steps=args.steps, predict_batches=args.predict_batches
    )
    if args.worker == "keras":
        worker: Any = KerasWorker(**kwargs)
    else:
        worker = UnetkitWorker(
            **kwargs,
            precision=args.precision,
            compile=args.compile,
            channels_last=not args.no_channels_last,
            convt=args.convt,
            optimizer_impl=args.optimizer_impl,
            subpixel_kernel=args.subpixel_kernel,
            compile_mode=args.compile_mode,
            device=args.device,
            predict_compile=args.predict_compile,
            tune=not args.no_tune,
        )
    t0 = time.perf_counter()
    worker.warm_up()
    _reply("ready", {"warmup_s": time.perf_counter() - t0})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        try:
            _reply(cmd, getattr(worker, cmd)())
        except Exception as e:  # report, keep serving: the parent decides
            _reply("error", {"error": f"{type(e).__name__}: {e}"})


# ------------------------------------------------------------------------------------------------ parent


class Worker:
    """A worker process and its command pipe."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        verbose: bool = False,
        script: str | Path = __file__,
    ):
        self.label = label
        self.verbose = verbose
        self.stderr = None if verbose else tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(script).resolve()), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=(os.environ | env) if env else None,
        )
        self.ready = self._read()
        if self.ready.get("kind") != "ready":
            hint = (
                ' (the reference needs `pip install -e ".[bench-keras]"`; or run with --no-keras)'
                if label == "keras"
                else ""
            )
            raise RuntimeError(
                f"{label}: the worker failed to start{hint}: {self.ready.get('error')}\n{self._stderr_tail()}"
            )

    def _stderr_tail(self, lines: int = 15) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return "".join(self.stderr.readlines()[-lines:])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG) :])
            if self.verbose:
                print(f"  [{self.label}] {line.rstrip()}")
        return {"kind": "error", "error": f"worker exited with code {self.proc.wait()}"}

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if out.get("kind") == "error":
            raise RuntimeError(f"{self.label}: {cmd}: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        info["cpu_flags_bf16"] = [f for f in ("avx512_bf16", "amx_bf16") if f in fields.get("Flags", "")]
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    from unetkit.perf import physical_cores

    info["cores"] = physical_cores()
    info["logical_cpus"] = os.cpu_count()
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


@dataclass
class Measure:
    """Images/s samples of one side on one size, plus its memory and warm-up."""

    train: list[float] = field(default_factory=list)
    predict: list[float] = field(default_factory=list)
    train_cpu: list[float] = field(default_factory=list)  # process CPU seconds per image (all threads)
    predict_cpu: list[float] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    warmup_s: float = 0.0

    def median(self, what: str) -> float | None:
        xs = getattr(self, what)
        return statistics.median(xs) if xs else None


def rate(result: dict[str, Any]) -> float:
    return result["images"] / result["seconds"]


def cpu_per_image(result: dict[str, Any]) -> float:
    return result["cpu_s"] / result["images"]


def worker_argv(
    kind: str,
    h: int,
    w: int,
    b: int,
    args: argparse.Namespace,
    extra: list[str] | None = None,
) -> list[str]:
    steps, pbatches = steps_for(h, w, b, args)
    return [
        "--worker",
        kind,
        "--size",
        str(h),
        str(w),
        "--batch",
        str(b),
        "--steps",
        str(steps),
        "--predict-batches",
        str(pbatches),
        "--device",
        args.device,
        *(extra or []),
    ]


def steps_for(h: int, w: int, b: int, args: argparse.Namespace) -> tuple[int, int]:
    """Optimizer steps per training measurement and batches per prediction measurement.

    About 128 images of 96x128 per measurement on the CPU (a few seconds each) and 20,000 on a GPU
    (about a second at the targets), scaled by the pixels per image.
    """
    if args.steps:
        return args.steps, args.predict_batches or args.steps
    images = (20_000 if _cuda_available() and args.device != "cpu" else 128) * 96 * 128 / (h * w)
    steps = max(2, min(200, round(images / b)))
    return steps, args.predict_batches or steps


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_pair(h: int, w: int, b: int, args: argparse.Namespace, log: list[str]) -> dict[str, Measure]:
    """Warm both workers, then measure them in turn for ``args.repeats`` rounds."""
    sides: dict[str, Worker] = {}
    results = {"keras": Measure(), "unetkit": Measure()}
    try:
        if not args.no_keras:
            t0 = time.perf_counter()
            sides["keras"] = Worker("keras", worker_argv("keras", h, w, b, args), verbose=args.verbose)
            results["keras"].warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sides["unetkit"] = Worker(
            "unetkit", worker_argv("unetkit", h, w, b, args, unetkit_flags(args)), verbose=args.verbose
        )
        results["unetkit"].warmup_s = time.perf_counter() - t0
        for r in range(args.repeats):
            for what in ("train", "predict"):
                for name, wk in sides.items():
                    result = wk.ask(what)
                    value = rate(result)
                    getattr(results[name], what).append(value)
                    getattr(results[name], what + "_cpu").append(cpu_per_image(result))
                    log.append(
                        f"round {r + 1} {h}x{w}/{b} {name:8s} {what:8s} {value:9.1f} img/s "
                        f"{cpu_per_image(result):6.3f} CPU-s/img  load {loadavg()}"
                    )
                    print("  " + log[-1], flush=True)
        for name, wk in sides.items():
            results[name].stats = wk.ask("stats")
        if "keras" in sides and _cuda_available() and args.device != "cpu" and not results["keras"].stats.get("gpu"):
            print(
                "  WARNING: unetkit ran on the GPU but Keras did not see one (tensorflow-cpu?); install a GPU "
                "backend, e.g. `pip install 'jax[cuda12]'` and set KERAS_BACKEND=jax",
                flush=True,
            )
    finally:
        for wk in sides.values():
            wk.close()
    return results


def unetkit_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        "--precision",
        args.precision,
        "--compile",
        args.compile,
        "--convt",
        args.convt,
        "--compile-mode",
        args.compile_mode,
    ]
    return flags + (["--predict-compile"] if args.predict_compile else [])


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _mb(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) else f"{x / 2**20:,.0f}"


def main_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| size, batch | side | train img/s | predict img/s | train CPU-s/img | predict CPU-s/img | "
        "train TFLOP/s | peak RSS MiB | peak device MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for name in ("keras", "unetkit"):
            m = row[name]
            if m["train"] is None:
                continue
            tflops = m["train"] * row["train_gflop"] / 1e3
            lines.append(
                f"| {row['size']}, {row['batch']} | {m['label']} | {_fmt(m['train'])} | "
                f"{_fmt(m['predict'])} | {_fmt(m['train_cpu'], 3)} | {_fmt(m['predict_cpu'], 3)} | "
                f"{tflops:.3f} | {_mb(m['stats'].get('rss_peak'))} | {_mb(m['stats'].get('device_peak'))} |"
            )
        if row["ratio_train"] is not None:
            lines.append(
                f"| {row['size']}, {row['batch']} | **unetkit / Keras** | **{row['ratio_train']:.2f}x** | "
                f"**{row['ratio_predict']:.2f}x** | {_fmt(row['cpu_ratio_train'], 2)}x less | "
                f"{_fmt(row['cpu_ratio_predict'], 2)}x less | | | |"
            )
    return "\n".join(lines)


def paired_ratio(a: list[float], b: list[float]) -> float | None:
    """Median of the per-round ratios a/b (each round measured both sides back to back)."""
    pairs = [x / y for x, y in zip(a, b) if y]
    return statistics.median(pairs) if pairs else None


def run_e2e(h: int, w: int, b: int, args: argparse.Namespace, log: list[str]) -> dict[str, Any]:
    """`unetkit train` on a folder of PNG scenes against the training loop measured around it."""
    from unetkit.data.synthetic import write_dataset

    work = Path(tempfile.mkdtemp(prefix="unetkit-e2e-"))
    n_val = max(1, round(args.e2e_images * args.e2e_val_fraction))
    t0 = time.perf_counter()
    write_dataset(work / "data", args.e2e_images, h, w, seed=0)
    print(f"  wrote {args.e2e_images} scenes in {time.perf_counter() - t0:.1f}s", flush=True)
    loop = Worker("unetkit", worker_argv("unetkit", h, w, b, args, unetkit_flags(args)), verbose=args.verbose)
    loop_rates = []
    try:
        loop_rates.append(rate(loop.ask("train")))
        cmd = [
            sys.executable,
            "-m",
            "unetkit",
            "train",
            "--images",
            str(work / "data" / "image"),
            "--masks",
            str(work / "data" / "mask"),
            "--n-classes",
            str(N_CLASSES),
            "--input-size",
            str(h),
            str(w),
            "--val-fraction",
            str(args.e2e_val_fraction),
            "--epochs",
            str(args.e2e_epochs),
            "--batch-size",
            str(b),
            "--device",
            args.device,
            "--out",
            str(work / "run"),
        ]
        if args.precision != "auto":
            cmd += ["--precision", args.precision]
        if args.compile != "auto":
            cmd += ["--compile" if args.compile == "on" else "--no-compile"]
        print("  " + " ".join(cmd[1:]), flush=True)
        load_before = loadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"unetkit train failed ({proc.returncode}): {proc.stderr[-2000:]}")
        loop_rates.append(rate(loop.ask("train")))
    finally:
        loop.close()
    rows = list(csv.DictReader((work / "run" / "metrics.csv").open()))
    shutil.rmtree(work, ignore_errors=True)
    n_train = args.e2e_images - n_val
    epoch_seconds = sum(float(r["seconds"]) for r in rows)
    train_rates = [float(r["images_per_s"]) for r in rows]
    e2e = n_train * args.e2e_epochs / wall
    loop_rate = statistics.median(loop_rates)
    later_epochs = statistics.median(train_rates[1:] or train_rates)  # the first one holds any compilation
    out = {
        "images": args.e2e_images,
        "train_images": n_train,
        "val_images": n_val,
        "epochs": args.e2e_epochs,
        "wall_s": wall,
        "epochs_s": epoch_seconds,
        "outside_epochs_s": wall - epoch_seconds,
        "e2e_img_s": e2e,
        "epoch_train_img_s": train_rates,
        "loop_img_s": loop_rates,
        "ratio": e2e / loop_rate,
        "ratio_training_part": later_epochs / loop_rate,
        "load": f"{load_before} -> {loadavg()}",
        "command": " ".join(["unetkit", *cmd[3:]]),
    }
    log.append(f"e2e {json.dumps(out)}")
    return out


def e2e_table(e: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| what | images/s | vs training loop |",
            "| --- | --- | --- |",
            f"| training loop in memory (before, after) | {' / '.join(_fmt(x) for x in e['loop_img_s'])} | 1.00 |",
            f"| `unetkit train`, training part of each epoch (metrics.csv) | "
            f"{' / '.join(_fmt(x) for x in e['epoch_train_img_s'])} | {e['ratio_training_part']:.2f} |",
            f"| `unetkit train`, whole command: {e['train_images']} train x {e['epochs']} epochs / {e['wall_s']:.1f} s "
            f"(of which {e['outside_epochs_s']:.1f} s outside the epochs: start, reading {e['images']} PNG pairs) | "
            f"{_fmt(e['e2e_img_s'])} | {e['ratio']:.2f} |",
        ]
    )


ABLATIONS: list[tuple[str, list[str], dict[str, str]]] = [
    ("defaults", [], {}),
    ("fp32 (no bf16 autocast)", ["--precision", "fp32"], {}),
    ("NCHW (no channels-last)", ["--no-channels-last"], {}),
    ("native transposed conv", ["--convt", "native"], {}),
    ("sub-pixel transposed conv", ["--convt", "subpixel"], {}),
    ("compile on", ["--compile", "on"], {}),
    ("compile off", ["--compile", "off"], {}),
    ("glibc malloc defaults (no allocator tuning)", ["--no-tune"], {}),
    ("OpenMP threads spin (OMP_WAIT_POLICY=ACTIVE)", [], {"OMP_WAIT_POLICY": "ACTIVE"}),
    ("OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)", [], {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("one thread (OMP_NUM_THREADS=1)", [], {"OMP_NUM_THREADS": "1"}),
    ("Adam foreach", ["--optimizer-impl", "foreach"], {}),
    ("Adam fused", ["--optimizer-impl", "fused"], {}),
    ("sub-pixel kernel by index and transposing copy (before)", ["--subpixel-kernel", "index"], {}),
]


def run_ablation(h: int, w: int, b: int, args: argparse.Namespace, log: list[str]) -> list[dict[str, Any]]:
    """unetkit with one fast path changed at a time, workers measured in turn, round after round."""
    chosen = [a for a in ABLATIONS if not args.ablation_only or any(s in a[0] for s in args.ablation_only)]
    workers: list[tuple[str, Worker, float]] = []
    rows = []
    try:
        for label, flags, env in chosen:
            t0 = time.perf_counter()
            print(f"  starting '{label}'", flush=True)
            try:
                wk = Worker(label, worker_argv("unetkit", h, w, b, args, flags), env=env, verbose=args.verbose)
            except RuntimeError as e:
                print(f"  {label}: {e}")
                continue
            workers.append((label, wk, time.perf_counter() - t0))
        samples: dict[str, dict[str, list[float]]] = {
            label: {"train": [], "predict": [], "train_cpu": [], "predict_cpu": []} for label, _, _ in workers
        }
        for r in range(args.repeats):
            for what in ("train", "predict"):
                for label, wk, _ in workers:
                    result = wk.ask(what)
                    value = rate(result)
                    samples[label][what].append(value)
                    samples[label][what + "_cpu"].append(cpu_per_image(result))
                    log.append(
                        f"ablation round {r + 1} {label:45s} {what:8s} {value:8.1f} img/s "
                        f"{cpu_per_image(result):6.3f} CPU-s/img load {loadavg()}"
                    )
                    print("  " + log[-1], flush=True)
        base = samples.get("defaults")
        for label, wk, warm in workers:
            s = samples[label]
            row = {
                "variant": label,
                "train": statistics.median(s["train"]),
                "predict": statistics.median(s["predict"]),
                "train_cpu": statistics.median(s["train_cpu"]),
                "predict_cpu": statistics.median(s["predict_cpu"]),
                "samples": s,
                "warmup_s": warm,
                "stats": wk.ask("stats"),
            }
            if base:
                row["train_vs_defaults"] = paired_ratio(s["train"], base["train"])
                row["predict_vs_defaults"] = paired_ratio(s["predict"], base["predict"])
            rows.append(row)
    finally:
        for _, wk, _ in workers:
            wk.close()
    return rows


def ablation_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | train img/s | vs defaults | train CPU-s/img | predict img/s | vs defaults | "
        "predict CPU-s/img | start-up + warm-up s | set-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {_fmt(r['train'])} | {_fmt(r.get('train_vs_defaults'), 2)} | "
            f"{_fmt(r['train_cpu'], 3)} | {_fmt(r['predict'])} | {_fmt(r.get('predict_vs_defaults'), 2)} | "
            f"{_fmt(r['predict_cpu'], 3)} | {r['warmup_s']:.0f} | {r['stats'].get('framework', '')} |"
        )
    return "\n".join(lines)


def parse_sizes(spec: str) -> list[tuple[int, int, int]]:
    if spec == "all":
        return ALL_SIZES
    if spec == "gpu":
        return GPU_SIZES
    if spec == "cpu":
        return CPU_SIZES
    out = []
    for item in spec.split(","):
        h, w, b = (int(v) for v in item.lower().split("x"))
        out.append((h, w, b))
    return out


def _parser() -> argparse.ArgumentParser:
    """The options of the parent (the table) and, hidden, of the workers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes",
        default=None,
        help="cpu (96x128x32), gpu (96x128x256, 384x480x16), all, or a list HxWxB,HxWxB "
        "(default: gpu on a CUDA machine, else cpu)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in about a minute: 2 rounds, 2 steps, 352 scenes x 2 epochs end to end",
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved measurement rounds (median reported)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per training measurement (0: by size)")
    ap.add_argument("--predict-batches", type=int, default=0, help="batches per prediction measurement")
    ap.add_argument("--no-keras", action="store_true", help="unetkit alone")
    ap.add_argument("--e2e", dest="e2e", action="store_true", default=None, help="time `unetkit train` end to end")
    ap.add_argument("--no-e2e", dest="e2e", action="store_false")
    ap.add_argument("--e2e-images", type=int, default=0, help="scenes written for the end-to-end run (0: by device)")
    ap.add_argument("--e2e-epochs", type=int, default=3)
    ap.add_argument("--e2e-val-fraction", type=float, default=0.1)
    ap.add_argument("--ablation", action="store_true", help="measure unetkit's fast paths one at a time instead")
    ap.add_argument("--ablation-only", nargs="*", default=None, help="variants whose label contains these words")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (unetkit side)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    ap.add_argument(
        "--convt",
        default="auto",
        choices=["auto", "subpixel", "native"],
        help="how the transposed convolutions run (same math)",
    )
    ap.add_argument("--predict-compile", action="store_true", help="torch.compile the Predictor's model too")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the .md and .json results")
    ap.add_argument("--verbose", action="store_true", help="show the workers' own output")
    from bench_infer import add_arguments as add_inference_arguments  # the prediction-paths table (bench_infer.py)

    add_inference_arguments(ap)
    # worker side
    ap.add_argument("--worker", choices=["keras", "unetkit"], help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-channels-last", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer-impl", default="auto", choices=["auto", "foreach", "fused"], help=argparse.SUPPRESS)
    ap.add_argument("--no-tune", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--subpixel-kernel", default="matmul", choices=["matmul", "index"], help=argparse.SUPPRESS)
    return ap


def _ablation_section(
    h: int, w: int, b: int, args: argparse.Namespace, log: list[str], report: dict[str, Any]
) -> list[str]:
    """The fast-path ablation at one size: its markdown lines (the rows go into ``report``)."""
    load0 = loadavg()
    abl = run_ablation(h, w, b, args, log)
    table = ablation_table(abl)
    report["sizes"].append({"size": f"{h}x{w}", "batch": b, "ablation": abl})
    print("\n" + table, flush=True)
    return [f"### unetkit fast paths, {h}x{w} batch {b} (load {load0} -> {loadavg()})", "", table, ""]


def _pair_row(h: int, w: int, b: int, train_gflop: float, args: argparse.Namespace, log: list[str]) -> dict[str, Any]:
    """unetkit and the reference measured in turn at one size: the main table's row."""
    load0 = loadavg()
    res = run_pair(h, w, b, args, log)
    row: dict[str, Any] = {
        "size": f"{h}x{w}",
        "batch": b,
        "train_gflop": train_gflop,
        "load": f"{load0} -> {loadavg()}",
    }
    for name, m in res.items():
        row[name] = {
            "train": m.median("train"),
            "predict": m.median("predict"),
            "train_samples": m.train,
            "predict_samples": m.predict,
            "train_cpu": m.median("train_cpu"),
            "predict_cpu": m.median("predict_cpu"),
            "stats": m.stats,
            "warmup_s": m.warmup_s,
            "label": f"{name} ({m.stats.get('framework', '')})",
        }
    row["ratio_train"] = paired_ratio(res["unetkit"].train, res["keras"].train)
    row["ratio_predict"] = paired_ratio(res["unetkit"].predict, res["keras"].predict)
    row["cpu_ratio_train"] = paired_ratio(res["keras"].train_cpu, res["unetkit"].train_cpu)
    row["cpu_ratio_predict"] = paired_ratio(res["keras"].predict_cpu, res["unetkit"].predict_cpu)
    return row


def _rows_section(rows: list[dict[str, Any]]) -> list[str]:
    """The main table and the end-to-end tables: their markdown lines (also printed)."""
    md: list[str] = []
    table = main_table(rows)
    loads = "; ".join(f"{r['size']}/{r['batch']}: {r['load']}" for r in rows)
    md += [table, "", f"Load average (1/5/15 min) before -> after each size: {loads}.", ""]
    print("\n" + table + f"\n\nload: {loads}")
    for r in rows:
        if "e2e" in r:
            et = e2e_table(r["e2e"])
            md += [
                f"`unetkit train` end to end, {r['size']} batch {r['batch']} (load {r['e2e']['load']}):",
                "",
                et,
                "",
                f"Command: `{r['e2e']['command']}`",
                "",
            ]
            print("\n" + et)
    return md


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        worker_main(args)
        return

    if args.quick:
        args.repeats, args.steps = 2, args.steps or 2
        args.e2e_images, args.e2e_epochs = args.e2e_images or 352, 2
    gpu = _cuda_available() and args.device != "cpu"
    sizes = parse_sizes(args.sizes or ("gpu" if gpu else "cpu"))
    if args.e2e is None:
        args.e2e = not args.ablation
    if not args.e2e_images:
        args.e2e_images = 1060 if not gpu else 8480  # the tutorial's CARLA set has 1060 frames
    sys.path.insert(0, str(HERE))
    from model_cost import count

    info = machine()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "cuda" if gpu else "cpu"
    print(
        f"machine: {info.get('gpu') or info.get('cpu')} | {info['cores']} cores | torch {info.get('torch')} | "
        f"load {loadavg()}",
        flush=True,
    )
    log: list[str] = []
    report: dict[str, Any] = {
        "machine": info,
        "command": " ".join(["python", *sys.argv]),
        "time": stamp,
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "sizes": [],
    }
    md = [
        f"## Speed: {info.get('gpu') or info.get('cpu')} ({info['cores']} cores), {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{report['command']}`; torch {info.get('torch')}; Keras backend "
        f"{report['keras_backend']}; medians of {args.repeats} interleaved rounds.",
        "",
    ]
    rows = []
    for h, w, b in sizes:
        cost = count(h, w, N_CLASSES)
        print(f"\n{h}x{w}, batch {b} (forward {cost.forward_gflop:.2f} GFLOP/image), load {loadavg()}", flush=True)
        if args.ablation:
            md += _ablation_section(h, w, b, args, log, report)
            continue
        row = _pair_row(h, w, b, cost.train_gflop, args, log)
        rows.append(row)
        report["sizes"].append(row)
        if args.e2e and (h, w, b) == sizes[0]:
            print(f"\nend to end: `unetkit train` on {args.e2e_images} PNG scenes at {h}x{w}, batch {b}", flush=True)
            row["e2e"] = run_e2e(h, w, b, args, log)
    if rows:
        md += _rows_section(rows)
    if not args.ablation and not args.no_inference:
        from bench_infer import inference_section

        md += inference_section(sizes[0], args, log, report)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"speed-{'ablation-' if args.ablation else ''}{kind}-{stamp}"
    (args.out / f"{name}.md").write_text("\n".join(md) + "\n")
    report["log"] = log
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out / name}.md and .json")


if __name__ == "__main__":
    main()
