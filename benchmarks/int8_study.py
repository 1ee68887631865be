"""Why int8 was slow on the CPU, and what each quantisation choice costs: the table in docs/inference.md (int8).

One process builds the seed's U-Net (random weights, 23 classes; ``--classes``, ``--batch-norm``), exports
it (``export_onnx``), and quantises it several ways with onnxruntime's tooling
(``unetkit.quantize.QuantSettings``): the QDQ graph as it was first written (no pre-processing), with
``quant_pre_process``, with the transposed convolutions in sub-pixel form, with the first and logits
convolutions' channels aligned for onnxruntime's VNNI kernel (the default), in QOperator format, with
``reduce_range``, per tensor, with int8 activations or uint8 weights (``--variants int8-s8s8 int8-u8u8``:
2-4x slower, left out by default), with onnxruntime's threads spinning, and run as ``OnnxPredictor``
runs a batch on the CPU (split between one-thread sessions: ``int8-dp``, ``fp32-onnx-dp``). The float
graphs (as exported, and prepared) and the unetkit PyTorch fp32 predictor are measured beside them. Every variant
runs the same batches, round after round, interleaved, so that a load change on a shared machine hits
them all alike; the figures are medians over the rounds. CPU-s/image is the process's CPU time (all
threads) per image: it shows a variant's cost even when other work takes some of the cores. Agreement:
share of pixels whose class equals the exported fp32 graph's, on the calibration images and on images
that were not used for calibration; with random weights (the default) many pixels are near a tie, so
it is far lower than on a trained run (``--run RUN``), where the export's guard applies.

    python benchmarks/int8_study.py                  # 96x128, batch 32, 5 rounds
    python benchmarks/int8_study.py --rounds 3 --variants int8 int8-seed fp32-onnx
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

N_CLASSES = 23
DATA_PARALLEL = "unetkit.data_parallel"  # a variant's marker: run as OnnxPredictor does on the CPU, not an ORT key


def _variants() -> dict[str, tuple[str, Any, dict[str, str]]]:
    """name -> (label, QuantSettings or a float marker, onnxruntime session config entries beyond the defaults)."""
    from unetkit.quantize import QuantSettings

    spin, parallel = {"session.intra_op.allow_spinning": "1"}, {DATA_PARALLEL: "1"}
    return {
        "torch-fp32": ("unetkit fp32, PyTorch (the default predictor)", "torch", {}),
        "fp32-onnx": ("fp32 ONNX as exported (onnxruntime)", "float", {}),
        "fp32-subpixel": ("fp32 ONNX, pre-processed + sub-pixel + aligned", QuantSettings(), {}),
        "int8-seed": (
            "int8 QDQ as first written (no pre-processing)",
            QuantSettings(prepare=False, subpixel=False, align=False),
            {},
        ),
        "int8-prep": ("int8 QDQ + quant_pre_process", QuantSettings(subpixel=False, align=False), {}),
        "int8-d2s": ("int8 + sub-pixel, DepthToSpace", QuantSettings(channels_last=False, align=False), {}),
        "int8-unaligned": ("int8 + sub-pixel, channels-last (before the alignment)", QuantSettings(align=False), {}),
        "int8": ("int8 + sub-pixel, channels-last, channels aligned (default)", QuantSettings(), {}),
        "int8-spin": ("int8 default, onnxruntime threads spinning", QuantSettings(), spin),
        "int8-dp": ("int8 default, batch split between one-thread sessions (OnnxPredictor)", QuantSettings(), parallel),
        "fp32-onnx-dp": ("fp32 ONNX as exported, batch split between one-thread sessions", "float", parallel),
        "int8-qop": ("int8 QOperator format (same steps)", QuantSettings(fmt="QOperator"), {}),
        "int8-rr": ("int8 default + reduce_range", QuantSettings(reduce_range=True), {}),
        "int8-tensor": ("int8 default, per-tensor weights", QuantSettings(per_channel=False), {}),
        "int8-s8s8": ("int8 default, int8 activations (S8S8)", QuantSettings(activations="QInt8"), {}),
        "int8-u8u8": ("int8 default, uint8 weights (U8U8)", QuantSettings(weights="QUInt8"), {}),
    }


def machine() -> str:
    """CPU model, core count and the instruction sets that matter for int8 and bf16."""
    model, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, {' '.join(isa) or 'no avx512/vnni'}"


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class Study:
    """The variants' runners and agreement, built once."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        import onnxruntime as ort

        from unetkit.config import DataConfig, ModelConfig, RunConfig
        from unetkit.data.synthetic import write_dataset
        from unetkit.export import export_onnx
        from unetkit.model import unet_model
        from unetkit.predict import Predictor, session_options
        from unetkit.quantize import calibration_images, prepare_float, quantize_bytes
        from unetkit.run import load_run, save_run

        h, w = args.size
        scenes = write_dataset(tmp / "scenes", args.calibrate, 360, 480, seed=1) / "image"
        held_out = write_dataset(tmp / "held", 16, 360, 480, seed=2) / "image"
        if args.run is not None:  # a trained run at this input size: agreement as a user would see it
            run, config = args.run, load_run(args.run, device="cpu").config
        else:
            import torch

            torch.manual_seed(0)
            model = ModelConfig(input_size=(h, w, 3), n_classes=args.classes, batch_norm=args.batch_norm)
            config = RunConfig(model=model, data=DataConfig(images=str(scenes)))
            net = unet_model((h, w, 3), 32, args.classes, batch_norm=args.batch_norm)
            if args.batch_norm:  # running statistics away from the identity, as after training
                _perturb_batch_norm(net)
            run = save_run(tmp / "run", net, config)
        float_data = export_onnx(run, tmp / "f.onnx", seed=0).path.read_bytes()
        calib = calibration_images(run, config, scenes, args.calibrate)
        self.check = calibration_images(run, config, held_out, 16)
        self.calib = calib
        rng = np.random.default_rng(0)
        self.x = calib[rng.integers(0, len(calib), args.batch)]  # one batch, run args.batches times per round
        self.batches, self.threads = args.batches, args.threads
        self.labels: dict[str, str] = {}
        self.run_fns: dict[str, Callable[[], Any]] = {}
        self.sessions: dict[str, Any] = {}
        for name, (label, how, entries) in _variants().items():
            if name not in args.variants:
                continue
            self.labels[name] = label
            if how == "torch":
                p = Predictor.from_run(run, device="cpu", precision="fp32")
                import torch

                xt = torch.from_numpy(self.x)
                self.run_fns[name] = lambda p=p, xt=xt: _torch_forward(p, xt)
                continue
            if how == "float":
                data = float_data
            elif name.startswith("fp32"):
                data = prepare_float(float_data, how)
            else:
                data = quantize_bytes(prepare_float(float_data, how), calib, [], how)
            self.sessions[name], self.run_fns[name] = self._runner(data, entries)
        ref = ort.InferenceSession(float_data, session_options(self.threads), providers=["CPUExecutionProvider"])
        self.agreement = {n: (_agree(s, ref, self.calib), _agree(s, ref, self.check)) for n, s in self.sessions.items()}

    def _runner(self, data: bytes, entries: dict[str, str]) -> tuple[Any, Callable[[], Any]]:
        """A session of ``data`` and its forward pass over the batch: as ``OnnxPredictor`` runs it when
        ``entries`` has ``DATA_PARALLEL`` (the batch split between one-thread sessions), else one session."""
        import onnxruntime as ort

        from unetkit.predict import session_options

        parallel = entries.get(DATA_PARALLEL) == "1"
        options = session_options(1 if parallel else self.threads)
        for key, value in entries.items():
            if key != DATA_PARALLEL:
                options.add_session_config_entry(key, value)
        s = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        if not parallel:
            return s, lambda: s.run(None, {"image": self.x})
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.threads)
        parts = np.array_split(self.x, self.threads)
        return s, lambda: list(pool.map(lambda part: s.run(None, {"image": part}), parts))

    def time(self, name: str) -> tuple[float, float]:
        """(images/s, CPU-s per image) for ``batches`` forward passes of the variant."""
        fn = self.run_fns[name]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(self.batches):
            fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        images = self.batches * len(self.x)
        return images / seconds, cpu / images


def _agree(session: Any, ref: Any, x: np.ndarray) -> float:
    """Share of the pixels of ``x`` whose class from ``session`` is ``ref``'s."""
    same = [
        (session.run(None, {"image": c})[0].argmax(1) == ref.run(None, {"image": c})[0].argmax(1)).mean()
        for c in np.array_split(x, max(1, len(x) // 16))
    ]
    return float(np.mean(same))


def _perturb_batch_norm(net: Any) -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.uniform_(-0.1, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.1, 0.1, generator=gen)


def _torch_forward(p: Any, x: Any) -> Any:
    import torch

    with torch.inference_mode():
        return p.model(x)


def study(args: argparse.Namespace) -> str:
    """Build, warm, measure interleaved; the markdown section."""
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="unetkit-int8-study-") as tmp:
        s = Study(args, Path(tmp))
        names = list(s.run_fns)
        for name in names:
            s.run_fns[name]()  # warm up
        load0 = load()
        rates: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
                rate, cpu = s.time(name)
                rates[name].append(rate)
                cpus[name].append(cpu)
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names), file=sys.stderr, flush=True)
        load1 = load()
    base = "fp32-onnx" if "fp32-onnx" in names else names[0]
    ratio = {n: statistics.median(a / b for a, b in zip(rates[n], rates[base])) for n in names}
    lines = [
        f"{datetime.date.today().isoformat()}, {machine()}; onnxruntime {onnxruntime.__version__}, torch "
        f"{torch.__version__.split('+')[0]}, {args.threads} thread(s); {args.size[0]}x{args.size[1]} input, batch "
        f"{args.batch}, {args.batches} batches a variant a round, median of {args.rounds} interleaved rounds; "
        f"load average (1/5/15 min) {load0} before, {load1} after.",
        "",
        f"| variant | masks/s | vs {base} (paired) | CPU-s/image | agreement with fp32, calibration / held out |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for n in names:
        ag = "reference" if n == "fp32-onnx" else ""
        if n in s.agreement and n != "fp32-onnx":
            ag = f"{s.agreement[n][0]:.3%} / {s.agreement[n][1]:.3%}"
        lines.append(
            f"| {s.labels[n]} (`{n}`) | {statistics.median(rates[n]):.1f} | {ratio[n]:.2f}x | "
            f"{statistics.median(cpus[n]):.4f} | {ag} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2, help="forward passes per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calibrate", type=int, default=64, help="calibration images")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads")
    ap.add_argument("--classes", type=int, default=N_CLASSES, help="classes of the seeded network (no --run)")
    ap.add_argument("--batch-norm", action="store_true", help="the seeded network with batch norm (no --run)")
    ap.add_argument("--run", type=Path, help="a trained run at --size (default: the seed network, random weights)")
    default = [n for n in _variants() if n not in ("int8-s8s8", "int8-u8u8")]  # 2-4x slower: --variants to see
    ap.add_argument("--variants", nargs="+", default=default, choices=list(_variants()))
    args = ap.parse_args()
    print(study(args))


if __name__ == "__main__":
    main()
