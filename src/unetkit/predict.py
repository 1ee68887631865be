"""Predictor: load a run folder, preprocess exactly as in training, return class-id masks.

Never imports the training loop. Masks come back at the input's original size: logits are
resized bilinearly to that size before the argmax (the seed's "index of the largest channel").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import perf
from .config import RunConfig
from .data.io import read_image
from .device import check_predict_precision, resolve_device, resolve_predict_precision
from .errors import ConfigError, DataError, ExportError, RunError, first_line, needs_extra
from .preprocess import image_to_tensor, resize_images, to_float
from .run import load_run
from .tiling import sliding_window_logits

if TYPE_CHECKING:
    from .tta import TTA

ImageLike = np.ndarray | str | Path


def as_image(image: ImageLike | object) -> np.ndarray:
    """A path, PIL image or (H, W[, C]) array -> (H, W, C) uint8 array; anything else a clear DataError."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = _one_array(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or min(array.shape) < 1:
        raise DataError(
            f"an image must be an (H, W) or (H, W, C) array, got shape {array.shape}; "
            "for a stack of images use predict_array"
        )
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number)):
        raise DataError(f"an image array must hold numbers, got dtype {array.dtype}")
    if array.dtype == np.uint8 and not array.flags.writeable:
        array = array.copy()  # np.asarray(PIL image) is read-only; torch.from_numpy warns on it
    if array.dtype not in (np.uint8, np.uint16):  # 16-bit keeps its precision, as data.io reads it
        if np.issubdtype(array.dtype, np.floating) and np.nanmax(array) <= 1.0:
            array = np.round(np.nan_to_num(array) * 255)
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    return array


def _one_array(image: object) -> np.ndarray:
    """An array, PIL image or CPU tensor as an array; a list, a stack or anything else a DataError."""
    if isinstance(image, (list, tuple)):
        raise DataError(
            f"predict takes one image, got a {type(image).__name__} of {len(image)}: use "
            "predict_batch([...]) for several paths, PIL images or arrays"
        )
    if not isinstance(image, np.ndarray):
        if not (hasattr(image, "__array_interface__") or hasattr(image, "__array__")):
            raise DataError(
                f"cannot predict on a {type(image).__name__}: give a file path, a PIL image or an (H, W[, C]) array"
            )
        image = np.asarray(image)  # PIL.Image, torch tensor on the CPU
    if image.ndim == 4:
        raise DataError(
            f"predict takes one image, got an array of shape {image.shape}: use predict_array for an "
            "(N, H, W[, C]) stack of images"
        )
    return image


def channel_argmax(x: torch.Tensor, dim: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``torch.argmax(x, dim).to(dtype)``, the same ids (the first of equal maxima; the first NaN where a
    pixel has one), faster on the CPU for the class dimension of logits.

    Torch's CPU argmax over the classes of (N, K, H, W) logits is a slow strided reduction: with the
    classes innermost (channels-last logits, as the models here give) NumPy's argmax along its last
    axis is ~1.6x faster; with the classes outermost, one max over them and one comparison per class
    (last to first, so the first maximum wins) is ~3x faster. Elsewhere torch's own.
    """
    k = x.shape[dim]
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or k < 2 or x.numel() == 0:
        return x.argmax(dim).to(dtype)
    if x.stride(dim) == 1:
        return torch.from_numpy(x.detach().movedim(dim, -1).numpy().argmax(-1)).to(dtype)
    best = x.amax(dim)
    if bool(torch.isnan(best).any()):  # amax propagates NaN; where a pixel has one, torch's own argmax
        return x.argmax(dim).to(dtype)
    out = torch.full(best.shape, k - 1, dtype=dtype)
    hit = torch.empty(best.shape, dtype=torch.bool)
    for c in range(k - 2, -1, -1):
        torch.eq(x.select(dim, c), best, out=hit)
        out.masked_fill_(hit, c)
    return out


class PredictorBase:
    """What every backend shares: the one preprocessing path, batching, resizing back, argmax.

    A backend (PyTorch here, onnxruntime in ``unetkit.export``) only supplies ``_forward``: (N, C, h, w)
    uint8 at the model's input size -> (N, K, h, w) float32 logits. Everything before and after it is
    this class, so that every backend gives the same masks for the same image.
    """

    config: RunConfig
    backend: str = "unknown"
    precision: str = "fp32"  # what the forward pass computes in: fp32, bf16 or int8
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None  # mask -> mask (unetkit.postprocess)

    # Above this many output elements (K x H x W), argmax masks are upsampled in bands of rows so that a
    # large image never holds its full-size float logits in memory at once (serving large uploads).
    band_elements: int = 1 << 25
    tta: TTA | None = None  # test-time augmentation (unetkit.tta); None: the plain forward pass

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _fused_ids(self, images: np.ndarray) -> np.ndarray | None:
        """(N, H, W) class ids for uint8 (N, H, W, C) images at the input size, when the backend computes
        the scaling and the argmax itself (``OnnxPredictor`` on an int8 file); None: the usual path."""
        return None

    def _ids_at_input_size(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray | None:
        """``_fused_ids`` for images already at the model's input size, shape and dtype; None otherwise."""
        if self.tta is not None or self.config.preprocess.predict_mode == "sliding" or not len(images):
            return None
        shapes = [images.shape[1:]] if isinstance(images, np.ndarray) else [im.shape for im in images]
        dtypes = [images.dtype] if isinstance(images, np.ndarray) else [im.dtype for im in images]
        if any(shape != self.input_size for shape in shapes) or any(d != np.uint8 for d in dtypes):
            return None
        return self._fused_ids(images if isinstance(images, np.ndarray) else np.stack(images))

    def set_tta(self, spec: str | TTA | None) -> PredictorBase:
        """Average the logits over flipped/rescaled views, e.g. ``"flip,scales=0.75,1,1.25"``; returns self."""
        from .errors import ConfigError
        from .tta import parse_tta

        tta = parse_tta(spec)
        session = getattr(self, "session", None)  # an ONNX file whose height and width are fixed
        fixed = session is not None and all(isinstance(d, int) for d in session.get_inputs()[0].shape[2:])
        if tta is not None and tta.scales != (1.0,) and fixed:
            raise ConfigError(
                f"--tta {tta.describe()}: this model takes one fixed input size, so only flip works; "
                "for scales, export the run with `unetkit export RUN --out FILE.onnx --dynamic`"
            )
        self.tta = tta
        return self

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """``_forward``, or its mean over the TTA views when ``tta`` is set."""
        if self.tta is None:
            return self._forward(x)
        from .tta import tta_forward

        m = self.config.model.size_multiple
        return tta_forward(self._forward, x, self.tta, multiple=m, resize=self.config.preprocess.resize)

    def probabilities(self, image: ImageLike | object) -> torch.Tensor:
        """(K, H, W) float32 class probabilities (softmax of the logits) at the image's original size."""
        return torch.softmax(self.logits(image), dim=0)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])

    @property
    def palette(self) -> list[list[int]]:
        return list(self.config.palette or [])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.config.model.input_size)  # type: ignore[return-value]

    def _sliding(self, image: np.ndarray) -> torch.Tensor:
        h, w, c = self.input_size
        return sliding_window_logits(
            self._infer,
            image_to_tensor(image, c),
            (h, w),
            self.config.preprocess.overlap,
            self.config.model.size_multiple,
        )

    def _model_size_logits(self, images: list[np.ndarray]) -> torch.Tensor:
        """One forward pass over images of any sizes, each resized to the model's input size."""
        h, w, c = self.input_size
        mode = self.config.preprocess.resize
        x = torch.cat([resize_images(image_to_tensor(im, c), (h, w), mode) for im in images])
        return self._infer(x)

    def logits(self, image: ImageLike | object) -> torch.Tensor:
        """(K, H, W) float32 logits at the image's original size."""
        return self.logits_batch([as_image(image)])[0]

    def logits_batch(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Logits at original size for several (H, W, C) uint8 images, sharing one forward pass."""
        if self.config.preprocess.predict_mode == "sliding":
            return [self._sliding(im) for im in images]
        logits = self._model_size_logits(images)
        out = []
        for im, lg in zip(images, logits):
            if tuple(im.shape[:2]) != tuple(lg.shape[-2:]):
                lg = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
            out.append(lg.cpu())
        return out

    def predict(self, image: ImageLike | object) -> np.ndarray:
        """(H, W) class ids (argmax over channels) at the image's original size."""
        return self.predict_batch([as_image(image)])[0]

    def predict_batch(self, images: Sequence[ImageLike | object], batch_size: int = 16) -> list[np.ndarray]:
        """(H, W) class-id masks for several images (any mix of sizes), ``batch_size`` per forward pass."""
        if not isinstance(images, (list, tuple)):
            raise DataError(
                f"predict_batch takes a list of images, got a {type(images).__name__}; use predict for one "
                "image and predict_array for an (N, H, W[, C]) array"
            )
        arrays = [as_image(im) for im in images]
        masks: list[np.ndarray] = []
        for start in range(0, len(arrays), batch_size):
            masks += self._predict_chunk(arrays[start : start + batch_size])
        return [self._post(m) for m in masks]

    def _predict_chunk(self, chunk: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass; images of one size are resized back and argmaxed together on the device."""
        if self.config.preprocess.predict_mode == "sliding":
            return [self._ids(channel_argmax(self._sliding(im), 0, self._ids_dtype())) for im in chunk]
        fused = self._ids_at_input_size(chunk)
        if fused is not None:
            return list(fused)
        logits = self._model_size_logits(chunk)
        k = logits.shape[1]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(chunk):
            groups.setdefault((int(im.shape[0]), int(im.shape[1])), []).append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(chunk)
        for size, group in groups.items():
            same = size == tuple(logits.shape[-2:])
            # as many images per resize as fit in band_elements: one at a time is ~5x slower on the CPU
            per = len(group) if same else max(1, self.band_elements // (k * size[0] * size[1]))
            for idx in (group[s : s + per] for s in range(0, len(group), per)):
                if len(idx) == 1 and not same:
                    out[idx[0]] = self._upsample_argmax(logits[idx[0]], size)
                    continue
                lg = logits[idx] if len(idx) < len(chunk) else logits
                if not same:
                    lg = F.interpolate(lg, size=size, mode="bilinear", align_corners=False)
                ids = self._ids(channel_argmax(lg, 1, self._ids_dtype()))  # one argmax and one copy back for the group
                for j, i in enumerate(idx):
                    out[i] = ids[j]
        return out

    def _post(self, mask: np.ndarray) -> np.ndarray:
        return mask if self.postprocess is None else self.postprocess(mask)

    def predict_array(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, H, W) class ids for an (N, H, W[, C]) array of images, as a notebook holds a data set.

        Images at the model's input size go through in batches of ``batch_size`` without per-image work
        on the host: one copy to the device, one forward pass, the argmax on the device and one copy of
        the masks back, uint8 where the class ids fit. On a GPU the next batch is prepared and queued
        while the previous one computes (two in flight). Other sizes (or sliding-window prediction) take
        ``predict_batch``.
        """
        if not isinstance(images, np.ndarray) and not hasattr(images, "__array__"):
            raise DataError(f"predict_array takes an (N, H, W[, C]) array, got a {type(images).__name__}")
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise DataError(
                f"predict_array takes an (N, H, W[, C]) array with C = 1, 3 or 4, got shape {images.shape}; "
                "use predict for one image"
            )
        h, w, c = self.input_size
        if (
            images.shape[1:3] != (h, w)
            or self.config.preprocess.predict_mode == "sliding"
            or images.shape[-1] != c
            or images.dtype != np.uint8
        ):
            return (
                np.stack(self.predict_batch(list(images), batch_size))
                if len(images)
                else np.zeros((0,) + images.shape[1:3], np.uint8)
            )
        out: list[np.ndarray] = []
        pending: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        for i in range(0, len(images), batch_size):
            fused = self._ids_at_input_size(images[i : i + batch_size])
            if fused is not None:  # the backend scaled the images and took the argmax itself
                ids = torch.from_numpy(fused)
            else:
                ids = self._infer(torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2)).argmax(1)
                ids = ids.to(self._ids_dtype())
            if ids.is_cuda:  # copy back without waiting; wait only for the batch before this one
                host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
                host.copy_(ids, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                pending.append((host, done))
            else:
                pending.append((ids.cpu(), None))
            while len(pending) > (1 if i + batch_size < len(images) else 0):
                host, event = pending.pop(0)
                if event is not None:
                    event.synchronize()
                out.append(host.numpy())
        masks = np.concatenate(out) if out else np.zeros((0, h, w), np.uint8)
        if self.postprocess is not None:
            masks = np.stack([self._post(m) for m in masks]) if len(masks) else masks
        return masks

    def _ids_dtype(self) -> torch.dtype:
        return torch.uint8 if self.config.model.n_classes <= 256 else torch.int32

    def _ids(self, ids: torch.Tensor) -> np.ndarray:
        return ids.to(self._ids_dtype()).cpu().numpy()  # narrowed on the device: 1 byte a pixel crosses back

    def _upsample_argmax(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Argmax of (K, h, w) logits bilinearly resized to ``size``; banded when that would be large."""
        k, h, w = logits.shape
        if (h, w) == size:
            return self._ids(channel_argmax(logits, 0, self._ids_dtype()))
        if k * size[0] * size[1] <= self.band_elements:
            up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
            return self._ids(channel_argmax(up, 0, self._ids_dtype()))
        # Separable bilinear (align_corners=False, as F.interpolate): widths first at the model's height,
        # then each band of output rows blends its two source rows.
        rows = F.interpolate(logits[None], size=(h, size[1]), mode="bilinear", align_corners=False)[0]
        src = ((torch.arange(size[0], dtype=torch.float64) + 0.5) * (h / size[0]) - 0.5).clamp_(min=0)
        y0 = src.floor().long().clamp_(max=h - 1)
        y1 = (y0 + 1).clamp_(max=h - 1)
        lam = (src - y0).float().to(rows.device)[None, :, None]
        y0, y1 = y0.to(rows.device), y1.to(rows.device)
        band = max(1, self.band_elements // (k * size[1]))
        out = torch.empty(size, dtype=self._ids_dtype(), device=rows.device)
        for top in range(0, size[0], band):
            sl = slice(top, top + band)
            blended = rows[:, y0[sl]] * (1 - lam[:, sl]) + rows[:, y1[sl]] * lam[:, sl]
            out[sl] = channel_argmax(blended, 0, out.dtype)
        return self._ids(out)


class Predictor(PredictorBase):
    """Class-id masks from images with a trained PyTorch model and its preprocessing settings.

    ``precision`` is ``fp32`` by default (the model's own masks; an imported Keras model agrees with Keras
    on every pixel) or ``bf16`` (autocast: faster where the hardware runs bf16, a few pixels may change).
    """

    backend = "pytorch"

    def __init__(
        self, model: nn.Module, config: RunConfig, *, device: str | torch.device = "auto", precision: str = "fp32"
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_predict_precision(precision, self.device)
        self.precision = "bf16" if self.dtype is not None else "fp32"
        if self.device.type == "cpu":
            perf.tune_cpu()
        self.model = model.to(self.device).eval()
        self.config = config

    @classmethod
    def from_run(
        cls, path: str | Path, *, device: str | torch.device = "auto", weights: str = "best", precision: str = "fp32"
    ) -> Predictor:
        run = load_run(path, weights=weights)
        return cls(run.model, run.config, device=device, precision=precision)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, K, H, W) float32 logits."""
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        x = to_float(x.to(self.device, non_blocking=True), self.config.preprocess)
        if self.config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None),
        ):
            return self.model(x).float()


INT8_FILE = "model.int8.onnx"  # where `unetkit export RUN --format onnx --int8` writes by default


def open_predictor(
    model: str | Path,
    *,
    device: str = "auto",
    precision: str | None = None,
    weights: str = "best",
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> PredictorBase:
    """A run folder or an exported .onnx file -> a predictor in the precision asked for.

    ``precision``: None (fp32 for a run folder, the file's own for an .onnx file), ``fp32``, ``bf16``
    (PyTorch autocast) or ``int8`` (the run's int8 ONNX file, ``RUN/model.int8.onnx``, on onnxruntime).
    """
    path = Path(model)
    check_predict_precision(precision)
    predictor: PredictorBase
    if path.suffix.lower() == ".onnx" or (precision == "int8" and path.is_dir()):
        file = path if path.suffix.lower() == ".onnx" else path / INT8_FILE
        if not file.is_file() and precision == "int8":
            raise RunError(
                f"--precision int8 needs the run's int8 model {file}, which does not exist: make it with "
                f"`unetkit export {path} --format onnx --int8` (calibrated on the run's training images)"
            )
        predictor = OnnxPredictor(file, device="cpu" if precision == "int8" else device)
        if precision is not None and precision != predictor.precision:
            raise ConfigError(
                f"{file} computes in {predictor.precision}, not {precision}: give the run folder for fp32/bf16 "
                "(PyTorch), or export the precision you want with `unetkit export RUN --format onnx [--int8]`"
            )
    else:
        predictor = Predictor.from_run(path, device=device, weights=weights, precision=precision or "fp32")
    predictor.postprocess = postprocess
    return predictor


def mask_agreement(predictor: PredictorBase, reference: PredictorBase, images: list[np.ndarray]) -> float:
    """Share of pixels where two predictors (e.g. int8 or bf16 against fp32) give the same class."""
    same = total = 0
    for a, b in zip(predictor.predict_batch(images), reference.predict_batch(images)):
        same += int((a == b).sum())
        total += a.size
    return same / max(total, 1)


# ---------------------------------------------------------------- the onnxruntime backend (unetkit.export)

META_PREFIX = "unetkit."


def need_onnx(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise needs_extra("ONNX export and onnxruntime prediction", module, "onnx", ExportError) from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``unetkit.*`` metadata of an exported file, without the prefix (needs only onnxruntime)."""
    return {
        k[len(META_PREFIX) :]: v
        for k, v in _session(Path(path), ["CPUExecutionProvider"])[1].items()
        if k.startswith(META_PREFIX)
    }


def _session(path: Path, providers: list[str], threads: int | None = None) -> tuple[Any, dict[str, str]]:
    ort = need_onnx("onnxruntime")
    if not path.is_file():
        raise RunError(f"ONNX file {path} does not exist (make one with `unetkit export RUN --out {path}`)")
    try:
        session = ort.InferenceSession(path.read_bytes(), session_options(threads), providers=providers)
    except Exception as e:
        raise ExportError(f"{path} is not a readable ONNX model ({first_line(e, 300)}); export it again") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


def session_options(threads: int | None = None) -> Any:
    """onnxruntime options for sharing the CPU with PyTorch in one process.

    onnxruntime's intra-op threads spin after each run by default, and PyTorch's OpenMP threads (which
    resize the logits back and take the argmax right after) spin too: two busy pools on the same cores
    slow each other down, the cause of the ONNX path serving slower than PyTorch. Here onnxruntime's
    pool sleeps when idle and uses as many threads as PyTorch.
    """
    ort = need_onnx("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxPredictor(PredictorBase):
    """``Predictor`` on onnxruntime: same preprocessing, batching and argmax, only the forward differs.

    On the CPU a batch of at least as many images as threads is split between the threads, each part
    run by a one-thread session of the same file (``data_parallel``, on by default there): onnxruntime's
    convolutions loop over the images of a batch and share each image's work between the threads,
    one synchronisation per layer per image, and its concatenations run on one thread; whole images
    per thread avoid both (docs/inference.md, int8). Smaller batches use the usual multi-thread session.
    The logits are the same either way.

    Images already at the input size (uint8, the model's channels, no TTA) of an int8 file go through a
    graph derived from the file in memory (``fuse``, on by default; ``unetkit.onnx_fuse``): uint8 in,
    class ids out, the scaling and the argmax run by onnxruntime inside those sessions instead of on the
    main thread; the ids are those of the host path, exactly. Other images, and files it does not
    apply to (float graphs, files from before), take the host path.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        providers: list[str] | None = None,
        data_parallel: bool | None = None,
        fuse: bool = True,
    ):
        ort = need_onnx("onnxruntime")
        self.path = Path(path)
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if device != "cpu" and "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
        self.session, meta = _session(self.path, providers)
        key = META_PREFIX + "config"
        if key not in meta:
            raise ExportError(
                f"{self.path} has no unetkit metadata (no '{key}'): it was not written by "
                "`unetkit export`; export the run folder with it"
            )
        try:
            self.config = RunConfig.from_dict(json.loads(meta[key]))
        except (json.JSONDecodeError, ConfigError) as e:
            raise ExportError(f"{self.path}: the stored config is invalid ({e}); export it again") from None
        self.metadata = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        self.precision = self.metadata.get("precision", "fp32")
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self._batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.dynamic = not all(isinstance(d, int) for d in inp.shape)
        self._providers = providers
        self.workers = torch.get_num_threads() if providers == ["CPUExecutionProvider"] else 1
        self.data_parallel = self.workers > 1 if data_parallel is None else data_parallel and self.workers > 1
        self._parallel: tuple[Any, Any] | None = None  # (one-thread session, thread pool), made when first needed
        self._pool: Any = None
        self._lock = threading.Lock()
        # the derived graph with the scaling and the argmax inside (unetkit.onnx_fuse), made when first needed;
        # fuse=False (or a graph that cannot be folded) keeps the host path
        self.fuse = fuse and providers == ["CPUExecutionProvider"]
        self._fused: tuple[Any, Any] | None = None  # (multi-thread session, one-thread session)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, K, H, W) float32 logits, in chunks when the file's batch is fixed."""
        arr = np.ascontiguousarray(to_float(x.cpu(), self.config.preprocess).numpy())
        return torch.from_numpy(self._run(arr, self._input, self.session, None))

    def _run(
        self, arr: np.ndarray, name: str, session: Any, single: Any, post: Callable[[np.ndarray], Any] | None = None
    ) -> np.ndarray:
        """``session`` on ``arr`` fed as ``name``: split between one-thread sessions (``single``, default the
        file's own) on the CPU pool when the batch is large enough, in chunks when the file's batch is fixed;
        ``post`` applied to each chunk's output in the thread that ran it."""
        post = post or (lambda out: out)
        if self._batch is None:
            parts = self.workers if self.data_parallel and len(arr) >= self.workers else 1
            chunks = [(c, len(c)) for c in np.array_split(arr, parts)]
        else:
            chunks = [self._padded(arr[i : i + self._batch]) for i in range(0, len(arr), self._batch)]
        if self.data_parallel and len(chunks) > 1:
            one, pool = (single, self._thread_pool()) if single is not None else self._parallel_session()
            outs = list(pool.map(lambda c: post(one.run(None, {name: c[0]})[0][: c[1]]), chunks))
        else:
            outs = [post(session.run(None, {name: c})[0][:n]) for c, n in chunks]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _fused_ids(self, images: np.ndarray) -> np.ndarray | None:
        """Class ids from the derived graph that takes the uint8 images and returns ids (int8 files)."""
        sessions = self._fused_sessions() if self.fuse else None
        if sessions is None:
            return None
        from .onnx_fuse import PIXELS, quantised_argmax

        dtype = np.uint8 if self._ids_dtype() == torch.uint8 else np.int32
        return self._run(
            np.ascontiguousarray(images), PIXELS, sessions[0], sessions[1], lambda q: quantised_argmax(q, dtype)
        )

    def _fused_sessions(self) -> tuple[Any, Any] | None:
        """The derived graph's (multi-thread, one-thread) sessions, made once; None if it does not fold."""
        with self._lock:
            if self._fused is None:
                self._fused = (None, None)
                try:
                    from .onnx_fuse import fused_graph

                    fused = fused_graph(self.path.read_bytes(), self.config.preprocess, self.input_size[2])
                except ImportError:  # onnxruntime without the onnx package: the host path
                    fused = None
                if fused is not None:
                    self._fused = self._sessions_of(fused)
            return None if self._fused[0] is None else self._fused

    def _sessions_of(self, data: bytes) -> tuple[Any, Any]:
        """(multi-thread, one-thread or None) sessions of a derived graph; (None, None) if onnxruntime refuses it."""
        ort = need_onnx("onnxruntime")
        try:
            multi = ort.InferenceSession(data, session_options(), providers=self._providers)
            one = None
            if self.data_parallel:
                one = ort.InferenceSession(data, session_options(1), providers=self._providers)
        except Exception:  # an onnxruntime without some op of the derived graph: the host path, as before
            return None, None
        return multi, one

    def _padded(self, chunk: np.ndarray) -> tuple[np.ndarray, int]:
        """A chunk of a fixed-batch file at the file's batch (zeros after it) and its real image count."""
        n, step = len(chunk), self._batch or len(chunk)
        if n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
        return chunk, n

    def _parallel_session(self) -> tuple[Any, Any]:
        """The one-thread session and the thread pool of the data-parallel path, made once."""
        pool = self._thread_pool()
        with self._lock:
            if self._parallel is None:
                self._parallel = _session(self.path, self._providers, threads=1)[0], pool
            return self._parallel

    def _thread_pool(self) -> Any:
        """The data-parallel path's threads, one per one-thread session run at a time, made once."""
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="unetkit-onnx")
            return self._pool
