"""The GPU figures in one run, with only PyTorch and this repository (no other package, no network).

Measured on the seed's U-Net (32 filters, 23 classes, random data), each against the others in the
same run: training images/s at 96x128 batch 256 and 384x480 batch 16, and prediction masks/s at
96x128 (batch 256), for

- ``eager-fp32``: a plain PyTorch loop of the same network (NCHW, float32, no compile): the baseline;
- ``unetkit``: unetkit's defaults as ``fit()`` and ``Predictor`` apply them (bf16 autocast where the GPU
  supports it for training, float32 for prediction, channels-last, fused Adam, cudnn.benchmark,
  ``torch.compile`` on CUDA);
- ``unetkit bf16``: prediction with ``--precision bf16``;
- ``compile:<mode>``: unetkit's settings under each ``torch.compile`` mode.

Every figure is the median of ``--repeats`` timed windows after a warm-up (compilation and cuDNN
autotuning excluded). One markdown file is written (``--out``; default
``benchmarks/results/gpu-<device>-<time>.md``) with the table, the machine and the raw samples.
``--device cpu --quick`` runs the whole script on the CPU at toy sizes (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # the repository's unetkit, installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unetkit.model import unet_model  # noqa: E402

N_CLASSES = 23
TRAIN_SIZES = [(96, 128, 256), (384, 480, 16)]
PREDICT_SIZE = (96, 128, 256)
QUICK_TRAIN = [(32, 48, 4), (64, 64, 2)]
QUICK_PREDICT = (32, 48, 4)
MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


class Setup:
    """One way of running the network: precision, memory format, compile mode."""

    def __init__(self, name: str, *, amp: bool, channels_last: bool, compile_mode: str | None, fused: bool):
        self.name, self.amp, self.channels_last, self.compile_mode, self.fused = (
            name,
            amp,
            channels_last,
            compile_mode,
            fused,
        )


def setups(device: torch.device, modes: list[str], train: bool) -> list[Setup]:
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    # unetkit's defaults: bf16 autocast for training where supported, fp32 for prediction; compile on CUDA
    out = [
        Setup("eager-fp32", amp=False, channels_last=False, compile_mode=None, fused=False),
        Setup("unetkit", amp=bf16 and train, channels_last=True, compile_mode="default" if cuda else None, fused=cuda),
    ]
    if not train:
        out.append(
            Setup("unetkit bf16", amp=True, channels_last=True, compile_mode="default" if cuda else None, fused=cuda)
        )
    for mode in modes:
        if cuda and mode == "default":
            continue  # that is the unetkit row
        out.append(Setup(f"compile:{mode}", amp=bf16 and train, channels_last=True, compile_mode=mode, fused=cuda))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(h: int, w: int, n_filters: int, s: Setup, device: torch.device) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    model = unet_model((h, w, 3), n_filters, N_CLASSES).to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model, mode=s.compile_mode) if s.compile_mode else model
    return model, run


def train_step(h: int, w: int, b: int, n_filters: int, s: Setup, device: torch.device) -> Callable[[], int]:
    """A closure doing one optimizer step on uint8 images held on the device, as fit() feeds them."""
    model, run = _model(h, w, n_filters, s, device)
    kwargs = {"fused": True} if s.fused else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, **kwargs)
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), generator=gen, dtype=torch.uint8).to(device)
    masks = torch.randint(0, N_CLASSES, (b, h, w), generator=gen).to(device)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    model.train()

    def step() -> int:
        x = images.float().div_(255).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp):
            logits = run(x)
        loss = F.cross_entropy(logits.float(), masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return b

    return step


def predict_step(h: int, w: int, b: int, n_filters: int, s: Setup, device: torch.device) -> Callable[[], int]:
    """A closure predicting class ids for one batch of uint8 images on the device (masks stay there)."""
    model, run = _model(h, w, n_filters, s, device)
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(1)
    images = torch.randint(0, 256, (b, 3, h, w), generator=gen, dtype=torch.uint8).to(device)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format

    def step() -> int:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp):
            ids = run(images.float().div_(255).contiguous(memory_format=fmt)).argmax(1).to(torch.uint8)
        return int(ids.shape[0])

    return step


def measure(step: Callable[[], int], device: torch.device, warmup: int, window_s: float, repeats: int) -> list[float]:
    """Images/s over ``repeats`` windows of at least ``window_s`` seconds, after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            n += step()
            if time.perf_counter() - t0 >= window_s:
                _sync(device)
                if time.perf_counter() - t0 >= window_s:
                    break
        rates.append(n / (time.perf_counter() - t0))
    return rates


def run_all(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    jobs = [("train", size, train_step) for size in (QUICK_TRAIN if args.quick else TRAIN_SIZES)]
    jobs.append(("predict", QUICK_PREDICT if args.quick else PREDICT_SIZE, predict_step))
    deadline = time.monotonic() + args.budget_s
    for what, (h, w, b), make in jobs:
        for s in setups(device, args.modes, what == "train"):
            row: dict[str, Any] = {"what": what, "size": f"{h}x{w}", "batch": b, "setup": s.name}
            if time.monotonic() > deadline:
                row["error"] = f"skipped: the {args.budget_s:.0f} s budget was spent"
            else:
                try:
                    t0 = time.perf_counter()
                    step = make(h, w, b, args.n_filters, s, device)
                    row["samples"] = measure(step, device, args.warmup, args.window_s, args.repeats)
                    row["img_s"] = statistics.median(row["samples"])
                    row["seconds"] = time.perf_counter() - t0
                except Exception as e:  # a compile mode this machine cannot run: say so, keep going
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            shown = f"{row['img_s']:,.1f} img/s" if "img_s" in row else row["error"]
            print(f"{what:7s} {h}x{w} batch {b:<4d} {s.name:32s} {shown}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    base = {(r["what"], r["size"]): r.get("img_s") for r in rows if r["setup"] == "eager-fp32"}
    lines = ["| what | size, batch | setup | images/s | vs eager fp32 |", "| --- | --- | --- | ---: | ---: |"]
    for r in rows:
        ref = base.get((r["what"], r["size"]))
        rate = r.get("img_s")
        vs = f"{rate / ref:.2f}x" if rate and ref else ""
        shown = f"{rate:,.1f}" if rate else r.get("error", "")
        lines.append(f"| {r['what']} | {r['size']}, {r['batch']} | {r['setup']} | {shown} | {vs} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="toy sizes, 4 filters, one short window: a smoke run")
    ap.add_argument("--modes", nargs="*", default=None, help=f"torch.compile modes (default: {' '.join(MODES)})")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window-s", type=float, default=2.0, help="seconds per timed window")
    ap.add_argument("--warmup", type=int, default=10, help="steps before timing (compilation happens here)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    ap.add_argument("--n-filters", type=int, default=32)
    ap.add_argument("--out", type=Path, help="the results file (markdown)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible; run with --device cpu (with --quick for a smoke run)")
    device = torch.device(args.device)
    if args.quick:
        args.repeats, args.window_s, args.warmup, args.n_filters = 1, 0.05, 1, 4
        args.modes = args.modes if args.modes is not None else []  # compiling on a CPU takes minutes
    elif args.modes is None:
        args.modes = list(MODES)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit() does
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / f"gpu-{device.type}-{stamp}.md"
    print(f"{name} | torch {torch.__version__} | modes {args.modes}", flush=True)
    t0 = time.perf_counter()
    rows = run_all(args, device)
    text = "\n".join(
        [
            f"## GPU figures: {name}, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"Command: `{' '.join(['python', *sys.argv])}`; torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}; medians of {args.repeats} windows of {args.window_s:g} s; "
            f"{time.perf_counter() - t0:.0f} s in all.",
            "",
            table(rows),
            "",
            "<details><summary>raw</summary>",
            "",
            "```json",
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1),
            "```",
            "</details>",
            "",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + table(rows) + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
