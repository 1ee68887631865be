"""Prediction paths against the seed's Keras code, in one run: the inference table of ``bench_speed.py``.

Rows (one input size, the seed's network, 23 classes): the Keras reference (``model.predict`` then
``argmax``), unetkit fp32 (the default), bf16 (autocast), int8 (static QDQ on onnxruntime, calibrated
on the folder's scenes), the fp32 ONNX file on onnxruntime, and ``predict_files`` on a folder of
full-size PNG scenes end to end (decode, batched forward, resize back and argmax, three PNGs written
per image). Each prediction figure is masks per second, the median of ``--repeats`` interleaved rounds;
ratios are paired per round: against Keras, and for the folder row against unetkit fp32 at the
network's input size (the model-only figure). Mask agreement is measured against fp32 on the scenes at
full size; the mIoU change needs a trained run and its validation set (``--infer-run RUN
--infer-images DIR --infer-masks DIR``; with the default random weights it is n/a).

    python benchmarks/bench_speed.py                 # includes this table
    python benchmarks/bench_infer.py [--quick]       # this table alone
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_speed as bs  # noqa: E402

PATHS = ("fp32", "bf16", "int8", "onnx")
LABELS = {
    "keras": "Keras reference (predict + argmax)",
    "fp32": "unetkit fp32 (default)",
    "bf16": "unetkit bf16 (--precision bf16)",
    "int8": "unetkit int8 (--precision int8, onnxruntime)",
    "onnx": "unetkit fp32 ONNX (onnxruntime)",
    "folder": "unetkit predict on a folder, end to end",
}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of the inference table (bench_speed.py gets them too)."""
    ap.add_argument("--no-inference", action="store_true", help="leave out the prediction-paths table")
    ap.add_argument("--infer-folder-images", type=int, default=0, help="full-size scenes predicted end to end")
    ap.add_argument("--infer-full-size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    ap.add_argument("--infer-run", type=Path, help="a trained run (at the benchmark's input size) instead of random")
    ap.add_argument("--infer-images", type=Path, help="with --infer-run: validation images for the mIoU change")
    ap.add_argument("--infer-masks", type=Path, help="with --infer-run: validation masks")


class InferWorker:
    """Every prediction path of one network, on the same images, in one process."""

    name = "infer"

    def __init__(self, args: argparse.Namespace):
        import numpy as np

        from unetkit.config import DataConfig, ModelConfig, RunConfig
        from unetkit.data.synthetic import write_dataset
        from unetkit.export import OnnxPredictor, export_onnx
        from unetkit.model import unet_model
        from unetkit.predict import Predictor
        from unetkit.run import save_run

        h, w = args.size
        self.np, self.batch, self.args = np, args.batch, args
        self.tmp = Path(tempfile.mkdtemp(prefix="unetkit-infer-"))
        fh, fw = args.infer_full_size
        self.scenes = write_dataset(self.tmp / "scenes", args.infer_folder_images, fh, fw, seed=1) / "image"
        run = args.infer_run
        if run is None:
            config = RunConfig(
                model=ModelConfig(input_size=(h, w, 3), n_classes=bs.N_CLASSES),
                data=DataConfig(images=str(self.scenes)),
            )
            run = save_run(self.tmp / "run", unet_model((h, w, 3), 32, bs.N_CLASSES), config)
        self.run = run
        self.p = {
            "fp32": Predictor.from_run(run, device=args.device, precision="fp32"),
            "bf16": Predictor.from_run(run, device=args.device, precision="bf16"),
            "onnx": OnnxPredictor(export_onnx(run, self.tmp / "f.onnx", seed=0).path, device=args.device),
        }
        q = export_onnx(
            run, self.tmp / "i.onnx", int8=True, calibrate=self.scenes, calibrate_count=64, max_change=1.0, seed=0
        )
        self.p["int8"] = OnnxPredictor(q.path, device="cpu")
        self.int8_summary = q.int8
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (args.predict_batches * args.batch, h, w, 3), dtype=np.uint8)

    def warm_up(self) -> None:
        for p in self.p.values():
            p.predict_array(self.images[: self.batch], batch_size=self.batch)

    def _path(self, name: str) -> dict[str, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        masks = self.p[name].predict_array(self.images, batch_size=self.batch)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert masks.shape == self.images.shape[:3]
        return {"images": len(masks), "seconds": seconds, "cpu_s": cpu}

    def fp32(self) -> dict[str, Any]:
        return self._path("fp32")

    def bf16(self) -> dict[str, Any]:
        return self._path("bf16")

    def int8(self) -> dict[str, Any]:
        return self._path("int8")

    def onnx(self) -> dict[str, Any]:
        return self._path("onnx")

    def folder(self) -> dict[str, Any]:
        from unetkit.predict_files import predict_files

        t0, c0 = time.perf_counter(), time.process_time()
        report = predict_files(self.p["fp32"], [self.scenes], self.tmp / "pred", overwrite=True, batch_size=self.batch)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert not report.skipped
        return {"images": len(report.written), "seconds": seconds, "cpu_s": cpu}

    def quality(self) -> dict[str, Any]:
        """Mask agreement with fp32 on the full-size scenes; mIoU per path on a validation set if given."""
        from unetkit.data.io import read_image
        from unetkit.predict import mask_agreement

        scenes = [read_image(f) for f in sorted(self.scenes.iterdir())[:32]]
        out: dict[str, Any] = {
            "agreement": {k: mask_agreement(self.p[k], self.p["fp32"], scenes) for k in ("bf16", "int8", "onnx")},
            "int8": self.int8_summary,
        }
        a = self.args
        if a.infer_run and a.infer_images and a.infer_masks:
            from unetkit.evaluate import evaluate

            out["miou"] = {k: evaluate(p, a.infer_images, a.infer_masks).metrics.mean_iou for k, p in self.p.items()}
        return out


def _worker_argv(h: int, w: int, b: int, args: argparse.Namespace) -> list[str]:
    _, batches = bs.steps_for(h, w, b, args)
    argv = ["--worker", "infer", "--size", str(h), str(w), "--batch", str(b), "--predict-batches", str(batches)]
    argv += ["--device", args.device, "--infer-folder-images", str(args.infer_folder_images)]
    argv += ["--infer-full-size", *map(str, args.infer_full_size)]
    for opt in ("infer_run", "infer_images", "infer_masks"):
        if getattr(args, opt):
            argv += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return argv


def run_inference(h: int, w: int, b: int, args: argparse.Namespace, log: list[str]) -> dict[str, Any]:
    """Warm the Keras and unetkit workers, then measure every path in turn for ``args.repeats`` rounds."""
    if not args.infer_folder_images:
        args.infer_folder_images = 16 if args.quick else (512 if bs._cuda_available() and args.device != "cpu" else 64)
    samples: dict[str, list[float]] = {k: [] for k in ("keras", *PATHS, "folder")}
    sides: dict[str, bs.Worker] = {}
    load0 = bs.loadavg()
    try:
        if not args.no_keras:
            sides["keras"] = bs.Worker("keras", bs.worker_argv("keras", h, w, b, args), verbose=args.verbose)
        sides["infer"] = bs.Worker("infer", _worker_argv(h, w, b, args), verbose=args.verbose, script=__file__)
        for r in range(args.repeats):
            for name in samples:
                if name == "keras" and "keras" not in sides:
                    continue
                result = sides["keras"].ask("predict") if name == "keras" else sides["infer"].ask(name)
                samples[name].append(bs.rate(result))
                log.append(f"round {r + 1} {h}x{w}/{b} {name:8s} predict {samples[name][-1]:9.1f} img/s")
                print("  " + log[-1], flush=True)
        quality = sides["infer"].ask("quality")
    finally:
        for wk in sides.values():
            wk.close()
    return {
        "size": f"{h}x{w}",
        "batch": b,
        "full_size": "x".join(map(str, args.infer_full_size)),
        "folder_images": args.infer_folder_images,
        "samples": samples,
        "median": {k: statistics.median(v) if v else None for k, v in samples.items()},
        "vs_keras": {k: bs.paired_ratio(v, samples["keras"]) for k, v in samples.items() if samples["keras"]},
        "folder_vs_model": bs.paired_ratio(samples["folder"], samples["fp32"]),
        "quality": quality,
        "load": f"{load0} -> {bs.loadavg()}",
    }


def inference_table(res: dict[str, Any]) -> str:
    """The markdown table of ``run_inference``'s results."""
    q = res["quality"]
    agree, miou = q.get("agreement", {}), q.get("miou")
    lines = [
        f"Prediction paths, {res['size']} input, batch {res['batch']}; the folder row: {res['folder_images']} "
        f"PNG scenes of {res['full_size']} (mask, colour, overlay written per image). int8: {q.get('int8')}.",
        "",
        "| path | masks/s | vs Keras | vs fp32 model-only | mask agreement with fp32 | mIoU change |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("keras", *PATHS, "folder"):
        rate = res["median"].get(name)
        if rate is None:
            continue
        vs = res["vs_keras"].get(name)
        model = res["folder_vs_model"] if name == "folder" else None
        ag = "1 (reference)" if name == "fp32" else (f"{agree[name]:.4%}" if name in agree else "")
        change = ""
        if miou and name in miou:
            change = "reference" if name == "fp32" else f"{(miou[name] - miou['fp32']) * 100:+.2f} points"
        elif name in PATHS:
            change = "n/a (random weights)"
        lines.append(
            f"| {LABELS[name]} | {rate:,.1f} | {'' if vs is None else f'{vs:.2f}x'} | "
            f"{'' if model is None else f'{model:.2f}'} | {ag} | {change} |"
        )
    return "\n".join(lines)


def inference_section(size: tuple[int, int, int], args: argparse.Namespace, log: list[str], report: dict) -> list:
    """Run the table for bench_speed.py: the markdown lines, and the results into ``report``."""
    h, w, b = size
    print(f"\nprediction paths at {h}x{w}, batch {b} (load {bs.loadavg()})", flush=True)
    res = run_inference(h, w, b, args, log)
    report["inference"] = res
    table = inference_table(res)
    print("\n" + table, flush=True)
    return [f"### Prediction paths (load {res['load']})", "", table, ""]


def worker_main(args: argparse.Namespace) -> None:
    """The infer worker: serve commands from stdin as bench_speed's workers do."""
    t0 = time.perf_counter()
    try:
        worker = InferWorker(args)
        worker.warm_up()
    except Exception as e:
        bs._reply("error", {"error": f"{type(e).__name__}: {e}"})
        return
    bs._reply("ready", {"warmup_s": time.perf_counter() - t0})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        try:
            bs._reply(cmd, getattr(worker, cmd)())
        except Exception as e:  # report, keep serving: the parent decides
            bs._reply("error", {"error": f"{type(e).__name__}: {e}"})
    shutil.rmtree(worker.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--predict-batches", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2 batches, 16 scenes")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--worker", choices=["infer"], help=argparse.SUPPRESS)
    add_arguments(ap)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.quick:
        args.repeats, args.steps = 2, args.steps or 2
    log: list[str] = []
    res = run_inference(*args.size, args.batch, args, log)
    print("\n" + inference_table(res))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
