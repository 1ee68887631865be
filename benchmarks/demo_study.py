"""Demo study: run `unetkit demo` (``unetkit.demo.run_demo``) under variants; record test scores and CPU time.

Why: the demo's default (``unetkit.demo.PLANS``) was chosen from runs like these; the script keeps
them re-runnable. Each variant is ``RECIPE[:key=value,...]``, where a key is ``train_count``,
``val_count``, ``epochs``, ``dropout`` (the model's) or a TrainConfig field (``batch_size=4``,
``lr=3e-3``, ``augment=none|mild|paste``, ``class_weights=median-frequency``, ``loss=ce``).
Validation mIoU (scenes of the training seed, never trained on) is what a choice is made on; test
scores (scenes of seed + 1) are reported. CPU-seconds are the process's user + system time (all
threads), so on a machine shared with other jobs they are the figure to compare; the wall time
there is not. One line of JSON per run goes to ``--out``.

    nice -n 15 python benchmarks/demo_study.py --threads 1 --variants seed strong strong:batch_size=4
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit import timebudget
from unetkit.demo import run_demo
from unetkit.plots import PER_CLASS_IOU

AUGMENTS: dict[str, dict[str, Any]] = {
    "none": {},
    "flip": {"hflip": True},
    "mild": {"hflip": True, "scale": (0.8, 1.25), "brightness": 0.1, "contrast": 0.1, "saturation": 0.1},
    # copy-paste of the object classes (pole, sign, pedestrian, vehicle) between the scenes of a batch
    "paste": {"copy_paste": 0.5, "paste_classes": (9, 10, 11, 12)},
    "paste1": {"copy_paste": 1.0, "paste_classes": (9, 10, 11, 12)},
    "paste-ped": {"copy_paste": 1.0, "paste_classes": (11, 12)},
    "flip-paste": {"hflip": True, "copy_paste": 1.0, "paste_classes": (9, 10, 11, 12)},
}


MODEL_FIELDS = ("dropout",)


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """'RECIPE[:key=value,...]' -> (recipe, keyword arguments for run_demo)."""
    recipe, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        value: Any = raw
        if key == "augment":
            value = AUGMENTS[raw]
        elif key in ("crop", "scene_size"):  # crop=64x64: train on random crops at that size (the model's input size)
            value = tuple(int(v) for v in raw.split("x"))
        elif key in MODEL_FIELDS:  # dropout=0: a ModelConfig field, passed as run_demo(model={...})
            kwargs.setdefault("model", {})[key] = float(raw)
            continue
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    pass
        kwargs[key] = value
    return recipe, kwargs


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(spec: str, seed: int, cpu_budget: float | None = None) -> dict[str, Any]:
    """One demo run in a temporary folder; its scores, CPU-seconds and wall seconds. With ``cpu_budget``
    (seconds of the process's CPU time per thread) training runs on a time budget counted in CPU time,
    so that runs on a shared machine get the compute an idle one would give them in that many seconds."""
    recipe, kwargs = parse_variant(spec)
    if cpu_budget is not None:
        threads = torch.get_num_threads()
        timebudget.clock = lambda: cpu_seconds() / threads
        kwargs = {"epochs": 10_000, "time_budget": cpu_budget, **kwargs}
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = cpu_seconds(), time.perf_counter()
        r = run_demo(Path(tmp) / "demo", recipe=recipe, seed=seed, progress=False, log=lambda _m: None, **kwargs)
        cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    m, config, history = r["metrics"], r["config"], r["history"]
    matrix = m.matrix.astype(np.float64)
    support = matrix.sum(1)
    recall = np.diag(matrix)[support > 0] / support[support > 0]
    iou = dict(zip(config.class_names, m.iou))
    validated = [h for h in history if h.get("val_miou") is not None]  # half-size epochs skip validation
    best = max(validated, key=lambda h: h["val_miou"])
    val_ped = best.get(f"{PER_CLASS_IOU}pedestrian")
    return {
        "variant": spec,
        "seed": seed,
        "cpu_budget": cpu_budget,
        "epochs": r["epochs"],
        "train": r["train_count"],
        "batch_size": config.train.batch_size,
        "best_val_miou": round(best["val_miou"], 4),
        "best_val_iou_pedestrian": None if val_ped is None else round(val_ped, 4),  # at the best epoch
        "test_aacc": round(m.pixel_accuracy, 4),
        "test_macc": round(float(recall.mean()), 4),
        "test_miou": round(m.mean_iou, 4),
        "iou_vehicle": round(iou["vehicle"], 4),
        "iou_pedestrian": round(iou["pedestrian"], 4),
        "iou": {k: round(v, 3) for k, v in iou.items()},
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(wall, 1),
        "train_wall_seconds": round(r["train_seconds"], 1),
        "threads": torch.get_num_threads(),
        "val_curve": [None if h.get("val_miou") is None else round(h["val_miou"], 4) for h in history],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["seed", "strong"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu-budget", type=float, default=None, help="train for this many CPU-seconds per thread")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_study.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for spec in a.variants:
        for seed in a.seeds:
            row = run_variant(spec, seed, a.cpu_budget)
            print(json.dumps(row), flush=True)
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
