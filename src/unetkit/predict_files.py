"""Prediction to files: index mask, colour mask, overlay (and with truth a side-by-side), plus a manifest.

Folders are predicted as a pipeline: images are decoded on worker threads while the previous batch
is on the model, each batch is one forward pass (resized back and argmaxed per size group on the
device), and the PNGs are encoded and written on worker threads. Nothing an input is, or a file
unetkit did not write, is ever overwritten; ``manifest.csv`` in the output folder says which files
belong to which input. Unreadable inputs are skipped and reported (``strict`` stops instead), and an
interruption still leaves the finished outputs listed in the manifest.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .data.folders import expand_inputs, natural_key
from .data.io import IMAGE_EXTENSIONS, read_image, read_mask
from .data.masks import decode_mask
from .device import check_predict_precision
from .ensemble import EnsemblePredictor, is_ensemble
from .errors import ConfigError, DataError, UnetkitError, first_line
from .fsio import atomic_write_bytes, atomic_write_text
from .loggers import advance, progress_bar
from .plots import colour_png, mask_png, overlay_png, side_by_side
from .predict import PredictorBase, mask_agreement, open_predictor
from .video import predict_video, video_outputs

OUTPUT_KINDS = ("mask", "colour", "overlay")
SUFFIXES = {"mask": "", "colour": "_colour", "overlay": "_overlay", "compare": "_compare"}
# What the readers decode (PIL): the training formats plus WebP and GIF, as the server accepts.
FOLDER_EXTENSIONS = tuple(dict.fromkeys(IMAGE_EXTENSIONS + (".webp", ".gif")))
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
MANIFEST = "manifest.csv"


class Interrupted(UnetkitError):
    """Ctrl-C during folder prediction: the message says what was written."""

    exit_code = 130


@dataclass
class PredictReport:
    """What a folder prediction wrote, skipped and where the manifest is."""

    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    manifest: Path | None = None
    agreement: str | None = None
    video_rows: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"wrote predictions for {len(self.written)} input(s) to {self.out} (which file is which: {self.manifest})"
        )
        if self.skipped:
            shown = "; ".join(f"{p}: {why}" for p, why in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f"\nskipped {len(self.skipped)} unreadable input(s): {shown}{more} (--strict stops at the first)"
        return text


def _find_mask(folder: Path, stem: str) -> Path | None:
    for ext in sorted(IMAGE_EXTENSIONS):
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.exists():
                return candidate
    return None


def load_predictor(
    model: str | Path, device: str = "auto", precision: str | None = None, **kwargs: Any
) -> PredictorBase:
    """A run folder, an ensemble folder or an .onnx file exported by `unetkit export` (see ``open_predictor``).

    An ensemble folder (``unetkit ensemble``) opens as an ``EnsemblePredictor``, except for ``int8``,
    which reads the folder's int8 ONNX file as for a run.
    """
    if is_ensemble(model) and precision != "int8":
        check_predict_precision(precision)
        predictor = EnsemblePredictor.from_run(model, device=device, precision=precision or "fp32")
        predictor.postprocess = kwargs.get("postprocess")
        return predictor
    return open_predictor(model, device=device, precision=precision, **kwargs)


def parse_outputs(outputs: str | Sequence[str] | None) -> tuple[str, ...]:
    """``mask,colour,overlay`` (any subset, comma-separated or a list) -> the kinds, checked."""
    if outputs is None:
        return OUTPUT_KINDS
    items = outputs.split(",") if isinstance(outputs, str) else list(outputs)
    kinds = tuple(dict.fromkeys(k.strip().lower().replace("color", "colour") for k in items if k.strip()))
    bad = [k for k in kinds if k not in OUTPUT_KINDS]
    if bad or not kinds:
        raise ConfigError(
            f"--outputs takes a comma-separated subset of {','.join(OUTPUT_KINDS)}, got {outputs!r}"
            + (f" ({', '.join(bad)} unknown)" if bad else "")
        )
    return kinds


def _manifest_outputs(folder: Path) -> set[Path]:
    """Files a unetkit manifest in ``folder`` lists as outputs (earlier predictions written there)."""
    rows = read_manifest(folder / MANIFEST)
    return {(folder / v).resolve() for row in rows for k, v in row.items() if k not in ("input", "note") and v}


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return rows if rows and "input" in rows[0] else []


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Image files (and videos) named by files, folders and globs; and the earlier outputs left out."""
    files: list[Path] = []
    left_out: list[Path] = []
    for item in inputs:
        p = Path(os.path.expanduser(str(item)))
        if p.is_dir():
            ours = _manifest_outputs(p)
            found = sorted(
                (f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FOLDER_EXTENSIONS + VIDEO_EXTENSIONS),
                key=lambda f: natural_key(f.name),
            )
            left_out += [f for f in found if f.resolve() in ours]
            found = [f for f in found if f.resolve() not in ours]
            if not found:
                raise DataError(f"folder {p} holds no images (looked for {', '.join(FOLDER_EXTENSIONS)})")
        elif p.is_file():
            found = [p]
        else:
            found = expand_inputs([str(item)])
        files += [f for f in found if f not in files]
    return files, left_out


def plan_names(files: Sequence[Path], kinds: Sequence[str]) -> list[str]:
    """A base name per input, so that every output file name is unique and says whose it is.

    ``a.png`` -> ``a.png``, ``a_colour.png``, ``a_overlay.png``; when two inputs share a stem (``a.jpg`` and
    ``a.png``) each keeps its extension (``a_jpg``, ``a_png``); then its folder; then a number.
    """
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem.lower()] = stems.get(f.stem.lower(), 0) + 1
    taken: set[str] = set()
    bases = []
    for f in files:
        ext = f.suffix.lstrip(".").lower()
        options = [f.stem] if stems[f.stem.lower()] == 1 else []
        options += [f"{f.stem}_{ext}", f"{f.parent.name}_{f.stem}_{ext}"]
        options += [f"{f.stem}_{ext}_{i}" for i in range(2, len(files) + 2)]
        for base in options:
            names = {(base + SUFFIXES[k] + ".png").lower() for k in kinds}
            if not names & taken:
                taken |= names
                bases.append(base)
                break
    return bases


def prepare_out(out: Path, files: Sequence[Path], planned: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output folder that would overwrite an input or a file unetkit did not write; create it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder (each image gets several output files)")
    inputs = {f.resolve() for f in files}
    folders = {f.parent.resolve() for f in files}
    if out.exists() and out.resolve() in folders:
        raise DataError(
            f"--out {out} is also where the input images are: the predictions would be mixed with them (and read "
            f"as images by the next run); choose another folder, e.g. --out {out.name or 'predictions'}-pred"
        )
    hit = [p for p in planned if p.resolve() in inputs]
    if hit:
        raise DataError(f"--out {out} would overwrite the input {hit[0]}; choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".unetkit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(
            f"--out {out} cannot be written ({e.strerror or e}); choose a folder you can create and write"
        ) from None
    ours = _manifest_outputs(out)
    foreign = [p for p in planned if p.exists() and p.resolve() not in ours]
    if foreign and not overwrite:
        raise DataError(
            f"--out {out} already holds {len(foreign)} file(s) this run would replace that no unetkit manifest "
            f"there lists (e.g. {foreign[0].name}); choose an empty folder, or pass --overwrite to replace them"
        )


@dataclass
class _Job:
    """One input: where it is, what its outputs are called, and (after prediction) its image and mask."""

    path: Path
    outputs: dict[str, Path]
    image: np.ndarray | None = None
    error: str | None = None


def _read(job: _Job) -> _Job:
    try:
        job.image = read_image(job.path)
    except (DataError, OSError) as e:
        job.error = first_line(e)
    return job


# Threads that only wait for the disk: each output is written durably (fsync of the file and of its
# folder, several ms on a real disk), which must not hold a decoding/encoding thread off the cores.
WRITE_THREADS = 4

Written = list[Future[None]]  # the durable writes of one input's output files


def _writer(
    predictor: PredictorBase, masks_dir: Path | None, io_pool: ThreadPoolExecutor, save_probs: str | None = None
) -> Callable[[_Job, np.ndarray], Written]:
    """``write(job, mask)``: encode the job's PNGs here, then write them on ``io_pool`` (returned futures)."""
    palette, config = predictor.palette, predictor.config

    def write(job: _Job, pred: np.ndarray) -> Written:
        image = job.image
        assert image is not None
        if save_probs is not None:  # a second pass for the probabilities (unetkit.uncertainty)
            from .uncertainty import save_probabilities

            kind, path = next(iter(job.outputs.items()))
            stem = path.name[: -len(SUFFIXES[kind] + ".png")]
            save_probabilities(path.parent, stem, predictor.probabilities(image), predictor.class_names, save_probs)
        files: list[tuple[Path, bytes]] = []
        for kind, path in job.outputs.items():  # one fixed PNG filter each, 2-3x faster than PIL (plots.py)
            if kind == "mask":
                files.append((path, mask_png(pred)))
            elif kind == "colour":
                files.append((path, colour_png(pred, palette)))
            elif kind == "overlay":
                files.append((path, overlay_png(image, pred, palette)))
        if masks_dir is not None:
            truth = _truth(masks_dir, job.path, config, palette)
            side_by_side(
                [(image, truth, pred)], ["Input Image", "True Mask", "Predicted Mask"], palette, job.outputs["compare"]
            )
        return [io_pool.submit(atomic_write_bytes, path, data) for path, data in files]

    return write


def _truth(masks_dir: Path, file: Path, config: Any, palette: list[list[int]]) -> np.ndarray:
    mask_file = _find_mask(masks_dir, file.stem)
    if mask_file is None:
        raise DataError(f"no mask named {file.stem}.* in {masks_dir} for {file}; masks pair with images by stem")
    mode = config.data.mask_mode
    return decode_mask(
        read_mask(mask_file),
        "index" if mode == "auto" else mode,
        config.model.n_classes,
        palette=palette,
        ignore_index=config.data.ignore_index,
        path=mask_file,
    )


def _batches(pool: ThreadPoolExecutor, jobs: list[_Job], size: int) -> Iterator[list[_Job]]:
    """Decoded batches, the next one decoding on the pool while the caller predicts this one."""
    pending: list[Future[_Job]] = [pool.submit(_read, j) for j in jobs[:size]]
    start = size
    while pending:
        nxt = [pool.submit(_read, j) for j in jobs[start : start + size]]
        start += size
        yield [f.result() for f in pending]
        pending = nxt


def predict_files(
    model: str | Path | PredictorBase,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    masks: str | Path | None = None,
    mode: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    outputs: str | Sequence[str] | None = None,
    strict: bool = False,
    overwrite: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    progress: bool = False,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    check_agreement: int = 0,
    frames: bool = False,
    log: Callable[[str], Any] | None = None,
    tta: str | None = None,
    save_probs: str | None = None,
) -> PredictReport:
    """Predict every image (and video) named by ``inputs`` (files, folders, globs) into the folder ``out``.

    ``tta``: test-time augmentation (``unetkit.tta``). ``save_probs``: also write each image's confidence
    and entropy PNGs, "npz" with its float16 probabilities too (``unetkit.uncertainty``).
    """
    kinds = parse_outputs(outputs)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = model if isinstance(model, PredictorBase) else load_predictor(model, device=device, precision=precision)
    if tta is not None:
        predictor.set_tta(tta)
    if save_probs is not None:
        from .uncertainty import check_format

        check_format(save_probs)
    if postprocess is not None:
        predictor.postprocess = postprocess
    if mode is not None:
        if mode not in ("resize", "sliding"):
            raise DataError(f"--mode must be resize or sliding, got {mode!r}")
        preprocess = replace(predictor.config.preprocess, predict_mode=mode)  # type: ignore[arg-type]  # checked
        predictor.config = replace(predictor.config, preprocess=preprocess)
    files, left_out = collect_inputs(inputs)
    out = Path(out)
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
    images = [f for f in files if f not in videos]
    all_kinds = kinds + (("compare",) if masks is not None else ())
    bases = plan_names(images, all_kinds)
    jobs = [_Job(f, {k: out / f"{b}{SUFFIXES[k]}.png" for k in all_kinds}) for f, b in zip(images, bases)]
    video_plan = _video_plan(videos, out, kinds, frames)
    prepare_out(out, files, [p for j in jobs for p in j.outputs.values()] + video_plan, overwrite)
    report = PredictReport(out, manifest=out / MANIFEST)
    if log is not None and left_out:
        log(f"left out {len(left_out)} earlier prediction(s) listed in a manifest.csv beside the inputs")
    if check_agreement and images and not isinstance(model, PredictorBase):
        report.agreement = agreement_note(model, predictor, images[:check_agreement], device)
        if log is not None:
            log(report.agreement)
    try:
        _run_jobs(predictor, jobs, report, masks, strict, batch_size, workers, progress, save_probs)
        for video in videos:
            _predict_video(predictor, video, out, kinds, frames, report, progress, strict)
    except KeyboardInterrupt:
        _write_manifest(report, jobs, kinds, all_kinds)
        raise Interrupted(
            f"interrupted: {len(report.written)} of {len(files)} input(s) were predicted and written to {out} "
            f"(listed in {report.manifest}); the others were not. Run the same command again to finish"
        ) from None
    _write_manifest(report, jobs, kinds, all_kinds)
    return report


def _run_jobs(
    predictor: PredictorBase,
    jobs: list[_Job],
    report: PredictReport,
    masks: str | Path | None,
    strict: bool,
    batch_size: int,
    workers: int | None,
    progress: bool,
    save_probs: str | None = None,
) -> None:
    """Decode, predict and write every job; finished writes are waited for even when interrupted."""
    workers = workers or min(8, (os.cpu_count() or 2))
    writes: list[tuple[_Job, Future[Written]]] = []
    with (
        ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="unetkit-write") as io_pool,
        ThreadPoolExecutor(workers, thread_name_prefix="unetkit-io") as pool,
        progress_bar(progress and bool(jobs), len(jobs), "predicting") as bar,
    ):
        write = _writer(predictor, Path(masks) if masks is not None else None, io_pool, save_probs)
        try:
            for batch in _batches(pool, jobs, batch_size):
                bad = [j for j in batch if j.error is not None]
                for j in bad:
                    if strict:
                        raise DataError(f"{j.path} cannot be read ({j.error}); without --strict it is skipped")
                    report.skipped.append((j.path, j.error or "unreadable"))
                good = [j for j in batch if j.error is None]
                preds = predictor.predict_batch([j.image for j in good], batch_size=batch_size) if good else []
                writes += [(j, pool.submit(write, j, p)) for j, p in zip(good, preds)]
                writes = _collect(writes, report, len(writes) > 2 * batch_size)
                if bar is not None:
                    advance(bar, len(batch), "images")
        finally:
            for job, fut in writes:  # everything already predicted is still written
                try:
                    _wait(fut)
                    report.written.append(job.path)
                except KeyboardInterrupt:
                    pass
            writes.clear()


def _wait(fut: Future[Written]) -> None:
    """Until the job's files are encoded and on disk; a failed write (disk full) raises its error."""
    for written in fut.result():
        written.result()


def _done(fut: Future[Written]) -> bool:
    return fut.done() and (fut.exception() is not None or all(w.done() for w in fut.result()))


def _collect(
    writes: list[tuple[Any, Future[Written]]], report: PredictReport, wait: bool
) -> list[tuple[Any, Future[Written]]]:
    """Record finished writes; with ``wait``, wait for the older half so memory stays bounded."""
    keep = []
    for i, (job, fut) in enumerate(writes):
        if _done(fut) or (wait and i < len(writes) // 2):
            _wait(fut)  # a failed write (disk full) stops the run with its error
            report.written.append(job.path)
            job.image = None
        else:
            keep.append((job, fut))
    return keep


def _write_manifest(report: PredictReport, jobs: list[_Job], kinds: Sequence[str], all_kinds: Sequence[str]) -> None:
    """manifest.csv: one row per input with its output file names (earlier rows for other inputs are kept)."""
    assert report.manifest is not None
    done = {p: True for p in report.written}
    skipped = dict(report.skipped)
    columns = ["input", *all_kinds, *report_video_columns(report), "note"]
    rows = []
    for job in jobs:
        if job.path in done:
            rows.append({"input": str(job.path), **{k: p.name for k, p in job.outputs.items()}, "note": ""})
        elif job.path in skipped:
            rows.append({"input": str(job.path), "note": f"skipped: {skipped[job.path]}"})
    rows += report.video_rows
    new_inputs = {r["input"] for r in rows}
    old = [r for r in read_manifest(report.manifest) if r.get("input") not in new_inputs]
    for r in old:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(old + rows)
    atomic_write_text(report.manifest, buf.getvalue())


def report_video_columns(report: PredictReport) -> list[str]:
    cols: list[str] = []
    for row in report.video_rows:
        cols += [k for k in row if k not in ("input", "note") and k not in cols]
    return cols


def agreement_note(model: str | Path, predictor: PredictorBase, files: Sequence[Path], device: str) -> str:
    """How often the chosen precision's masks agree with float32 on the first images (``--check-agreement``)."""
    if predictor.precision == "fp32":
        return "precision fp32: the reference itself (agreement 100%)"
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return f"--check-agreement needs the run folder (float32 reference); {path} is an {predictor.precision} file"
    reference = load_predictor(path, device=device, precision="fp32")
    images = []
    for f in files:
        try:
            images.append(read_image(f))
        except DataError:
            continue
    share = mask_agreement(predictor, reference, images)
    return (
        f"precision {predictor.precision}: masks agree with fp32 on {share:.3%} of the pixels of {len(images)} image(s)"
    )


def _video_plan(videos: Sequence[Path], out: Path, kinds: Sequence[str], frames: bool) -> list[Path]:
    if not videos:
        return []
    return [p for v in videos for p in video_outputs(v, out, kinds, frames).values()]


def _predict_video(
    predictor: PredictorBase,
    video: Path,
    out: Path,
    kinds: Sequence[str],
    frames: bool,
    report: PredictReport,
    progress: bool,
    strict: bool,
) -> None:
    try:
        written = predict_video(predictor, video, out, outputs=kinds, frames=frames, progress=progress)
    except DataError as e:
        if strict:
            raise
        report.skipped.append((video, first_line(e)))
        return
    report.written.append(video)
    report.video_rows.append({"input": str(video), **{k: p.name for k, p in written.items()}, "note": ""})
