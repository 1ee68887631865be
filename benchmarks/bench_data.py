"""Data-pipeline throughput: the in-memory uint8 cache against streaming from disk on DataLoader workers.

Writes a folder of the built-in synthetic driving scenes (PNG images, palette PNG masks), then
measures images per second delivered as training batches (uint8 images, int64 masks, shuffled with
a per-epoch seed), without a model, so the numbers are the ceiling the data side sets:

- memory, first epoch: decoding every file into the cache, then one pass over it;
- memory, later epochs: batches gathered from the cache;
- stream, per epoch: decoding on N DataLoader workers (N = 0: in the training process), including
  the workers' start-up each epoch.

The measuring process uses ``--threads`` torch threads (default 1, as each worker does): on a busy
machine, OpenMP threads spinning against other processes can slow small per-image tensor ops by 10x.

Usage: python benchmarks/bench_data.py [--count 512] [--size 96 128] [--batch-size 32] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from unetkit.data.loader import SegmentationData
from unetkit.data.stream import StreamingData


def write_scenes(out: Path, count: int, height: int, width: int) -> tuple[Path, Path]:
    """The synthetic scenes as image/ and mask/ folders (class ids as palette PNG indices)."""
    from unetkit.data.synthetic import write_dataset

    write_dataset(out, count, height, width, seed=0)
    return out / "image", out / "mask"


def epoch(data: SegmentationData | StreamingData, batch_size: int, seed: int) -> int:
    """One shuffled pass; returns the number of images delivered."""
    n = 0
    for x, y in data.batches(batch_size, device="cpu", shuffle=True, generator=torch.Generator().manual_seed(seed)):
        n += x.shape[0]
        assert y.dtype == torch.int64
    return n


def model_rate(size: tuple[int, int, int], n_classes: int, batch_size: int, steps: int) -> float:
    """Images/s of training steps of the seed's U-Net (fp32, all cores): what the data side must keep up with."""
    from unetkit.model import unet_model

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        model = unet_model(size, 32, n_classes)
        opt = torch.optim.Adam(model.parameters(), 1e-3, eps=1e-7)
        x = torch.rand(batch_size, size[2], size[0], size[1])
        y = torch.randint(0, n_classes, (batch_size, size[0], size[1]))
        times = []
        for _ in range(steps + 1):  # the first step warms up
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        return batch_size * steps / sum(times[1:])
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=512, help="scenes in the folder")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"), help="scene and model size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per mode (after the first)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers to try")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the measuring process (workers always use 1)"
    )
    parser.add_argument(
        "--model-steps",
        type=int,
        default=3,
        help="also time this many training steps of the seed's U-Net on the CPU (0: skip)",
    )
    parser.add_argument("--data", type=Path, default=None, help="reuse/write the scenes here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = args.size
    size = (h, w, 3)
    n_classes = 13

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "scenes"
        if not (root / "image").is_dir() or len(list((root / "image").iterdir())) < args.count:
            t0 = time.perf_counter()
            write_scenes(root, args.count, h, w)
            print(f"wrote {args.count} scenes ({h}x{w}) to {root} in {time.perf_counter() - t0:.1f}s")
        images, masks = root / "image", root / "mask"
        rows: list[tuple[str, str, float]] = []

        t0 = time.perf_counter()
        memory, _ = SegmentationData.from_folders(images, masks, size, n_classes=n_classes, mask_mode="index")
        n = epoch(memory, args.batch_size, 0)
        rows.append(("memory", "first epoch: decode all into the cache, then one pass", n / (time.perf_counter() - t0)))
        t0 = time.perf_counter()
        n = sum(epoch(memory, args.batch_size, e) for e in range(1, args.epochs + 1))
        rows.append(("memory", "later epochs: batches from the uint8 cache", n / (time.perf_counter() - t0)))

        for workers in args.workers:
            stream, _ = StreamingData.from_folders(
                images, masks, size, n_classes=n_classes, mask_mode="index", num_workers=workers
            )
            epoch(stream, args.batch_size, 0)  # warm the file system cache, as the memory mode's read did
            t0 = time.perf_counter()
            n = sum(epoch(stream, args.batch_size, e) for e in range(1, args.epochs + 1))
            label = "decode in the training process" if workers == 0 else f"decode on {workers} DataLoader worker(s)"
            rows.append(("stream", f"every epoch: {label}", n / (time.perf_counter() - t0)))
        if args.model_steps:
            rate = model_rate(size, n_classes, args.batch_size, args.model_steps)
            rows.append(("(model)", f"training steps of the seed's U-Net, fp32, {os.cpu_count()} core(s)", rate))

    cpus = os.cpu_count()
    print(
        f"\n{args.count} synthetic scenes {h}x{w}, batch {args.batch_size}, {cpus} CPU core(s), "
        f"{args.threads} torch thread(s), torch {torch.__version__}, {platform.machine()}\n"
    )
    print("| cache | what is timed | images/s |")
    print("| --- | --- | ---: |")
    for mode, what, rate in rows:
        print(f"| {mode} | {what} | {rate:,.0f} |" if rate >= 100 else f"| {mode} | {what} | {rate:.1f} |")


if __name__ == "__main__":
    main()
