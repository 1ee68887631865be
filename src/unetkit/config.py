"""Typed settings for model, preprocessing, data and training; validated on creation, saved as JSON.

``RunConfig`` is everything a run folder needs to rebuild its model and preprocessing; an edited
``config.json`` with a wrong type or value is rejected with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError
from .palette import default_palette

# The choices of each setting: the config validates against them and the CLI's help lists them
# (typing.get_args gives the values).
ModelName = Literal["unet", "fcn"]
ResizeMode = Literal["bilinear", "nearest"]
PredictMode = Literal["resize", "sliding"]
Normalize = Literal["scale", "mean-std", "percentile"]
MaskMode = Literal["auto", "index", "binary", "channels", "palette"]
CacheMode = Literal["auto", "memory", "stream"]
Optimizer = Literal["adam", "adamw"]
Schedule = Literal["constant", "cosine", "plateau"]
# The loss kinds unetkit.losses implements: a pixel term, a region term, or one of each summed.
Loss = Literal[
    "ce", "ohem", "focal", "dice", "lovasz",
    "ce+dice", "ce+lovasz", "ohem+dice", "ohem+lovasz", "focal+dice", "focal+lovasz",
]  # fmt: skip
Precision = Literal["auto", "fp32", "bf16"]
Compile = Literal["auto", "on", "off"]
NanPolicy = Literal["stop", "skip"]
Recipe = Literal["seed", "strong"]

LOSSES: tuple[str, ...] = typing.get_args(Loss)

CONFIG_VERSION = 1


def valid_sizes_near(size: int, multiple: int) -> tuple[int, int]:
    """The nearest multiples of ``multiple`` below and above ``size`` (below is at least ``multiple``)."""
    below = max(multiple, size // multiple * multiple)
    above = -(-size // multiple) * multiple
    return below, max(above, multiple)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


@functools.cache
def choices_of(cls: Any) -> dict[str, tuple[str, ...]]:
    """The fields of config class ``cls`` typed ``Literal[...]``, each with its values."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }


def _check_choices(obj: Any) -> None:
    for name, choices in choices_of(obj.__class__).items():
        _choice("model" if name == "name" else name, getattr(obj, name), choices)  # model.name is --model


def _set(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen config while it is created (e.g. a JSON list into a tuple)."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class ModelConfig:
    """The network: the seed's ``unet_model`` arguments plus options beyond the seed."""

    name: ModelName = "unet"  # "unet" (the seed) or "fcn" (the baseline)
    input_size: tuple[int, int, int] = (96, 128, 3)  # (height, width, channels), as in Keras
    n_filters: int = 32
    n_classes: int = 23
    depth: int = 5
    dropout: float = 0.3
    batch_norm: bool = False

    def __post_init__(self) -> None:
        _set(self, "input_size", tuple(int(v) for v in self.input_size))
        _check_choices(self)
        _check(len(self.input_size) == 3, f"input_size must be (height, width, channels), got {self.input_size}")
        h, w, c = self.input_size
        _check(c >= 1, f"input channels must be >= 1 (1 gray, 3 RGB, 4 RGBA, more for multi-band TIFFs), got {c}")
        _check(self.depth >= 2, f"depth must be at least 2, got {self.depth}")
        multiple = 2 ** (self.depth - 1)
        _check(
            h > 0 and w > 0,
            f"input size {h}x{w} must be positive: height and width in pixels, multiples of {multiple} "
            "(the seed: 96 128)",
        )
        if h % multiple or w % multiple:
            raise ConfigError(
                f"input size {h}x{w} is not divisible by {multiple} (the network halves it {self.depth - 1} "
                f"times). Nearest valid: height {valid_sizes_near(h, multiple)}, width {valid_sizes_near(w, multiple)}."
            )
        _check(self.n_filters >= 1, f"n_filters must be >= 1, got {self.n_filters}")
        _check(self.n_classes >= 1, f"n_classes must be >= 1, got {self.n_classes}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.depth - 1)


@dataclass(frozen=True)
class PreprocessConfig:
    """The one preprocessing path shared by training, evaluation, prediction, export and serving."""

    resize: ResizeMode = "bilinear"  # images; masks are always resized with nearest neighbour
    predict_mode: PredictMode = "resize"  # "resize" the image to the model size, or "sliding" window at full size
    overlap: float = 0.25  # sliding-window overlap as a fraction of the window
    # per-channel normalisation (preprocess.to_float), statistics from the training set
    normalize: Normalize = "scale"  # "scale" (x / max_value, the seed), "mean-std" or "percentile" (1st..99th)
    max_value: float = 0.0  # scale's divisor; 0: by bit depth (255 for 8-bit images, 65535 for 16-bit)
    mean: list[float] | None = None
    std: list[float] | None = None
    low: list[float] | None = None
    high: list[float] | None = None

    def __post_init__(self) -> None:
        _check_choices(self)
        _check(self.max_value >= 0, f"max_value must be >= 0, got {self.max_value}")
        _check(
            not (self.mean and self.std) or len(self.mean) == len(self.std),
            "preprocess.mean and preprocess.std must have one value per channel",
        )
        _check(0.0 <= self.overlap < 1.0, f"overlap must be in [0, 1), got {self.overlap}")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it."""

    images: str | None = None
    masks: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    val_fraction: float = 0.0
    split_seed: int = 0
    mask_mode: MaskMode = "auto"
    palette_file: str | None = None  # JSON {class name: [r, g, b]} for mask_mode "palette"
    ignore_index: int | None = None
    label_map_file: str | None = None  # the --label-map JSON it came from (docs/labels.md)
    label_map: list[int] | None = None  # source class id -> trained class id (or the ignore index)
    cache: CacheMode = "auto"  # "auto", "memory" (decode once into a uint8 tensor) or "stream" (DataLoader workers)
    num_workers: int = 2
    recursive: bool = False  # also read the folders' sub-folders (pairs share their path inside them)
    skip_bad: bool = False  # leave out (and report) unreadable pairs instead of stopping
    split_file: str | None = None  # k-fold: the splits.json this run's train/val sets come from
    fold: int | None = None  # k-fold: which entry of split_file

    def __post_init__(self) -> None:
        _check_choices(self)
        _check(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check((self.val_images is None) == (self.val_masks is None), "give both val_images and val_masks, or neither")
        _check(not (self.val_images and self.val_fraction), "use validation folders or val_fraction, not both")
        _check(
            self.mask_mode != "palette" or self.palette_file is not None,
            "mask_mode 'palette' needs a palette file (JSON of class name -> [r, g, b])",
        )
        _check(
            self.ignore_index is None or self.ignore_index >= 0, f"ignore_index must be >= 0, got {self.ignore_index}"
        )
        _check(self.num_workers >= 0, "num_workers must be >= 0")
        _check((self.split_file is None) == (self.fold is None), "give both split_file and fold, or neither")
        _check(self.fold is None or self.fold >= 0, f"fold must be >= 0, got {self.fold}")
        _check(
            self.fold is None or not (self.val_images or self.val_fraction),
            "a fold of split_file is its own validation set: leave out val_images/val_fraction",
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Joint image/mask augmentation on the device; everything off is the seed."""

    hflip: bool = False
    scale: tuple[float, float] = (1.0, 1.0)  # random scale range, then crop/pad to the input size
    rotate: float = 0.0  # max degrees
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # max hue rotation as a fraction of the colour wheel (0.5 = half a turn)
    copy_paste: float = 0.0  # chance that a sample gets the paste_classes pixels of another sample pasted on it
    paste_classes: tuple[int, ...] = ()  # class ids copy-paste moves (objects: pedestrians, vehicles, ...)

    def __post_init__(self) -> None:
        _set(self, "scale", tuple(float(v) for v in self.scale))
        _check(
            len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1],
            f"scale must be (min, max) with 0 < min <= max, got {self.scale}",
        )
        _set(self, "paste_classes", tuple(int(c) for c in self.paste_classes))
        _check(
            0.0 <= self.copy_paste <= 1.0, f"augment.copy_paste must be a probability in [0, 1], got {self.copy_paste}"
        )
        _check(
            not self.copy_paste or bool(self.paste_classes),
            "augment.copy_paste needs augment.paste_classes: the class ids (or names) of the objects to paste",
        )
        for name in ("rotate", "brightness", "contrast", "saturation", "hue"):
            _check(getattr(self, name) >= 0, f"augment.{name} must be >= 0")
        _check(self.hue <= 0.5, f"augment.hue must be <= 0.5 (half a turn of the colour wheel), got {self.hue}")

    @property
    def enabled(self) -> bool:
        return self != AugmentConfig()


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Defaults are the seed's: Adam(1e-3, eps 1e-7), sparse CE, batch 32."""

    epochs: int = 40
    batch_size: int = 32
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    weight_decay: float = 0.0
    schedule: Schedule = "constant"  # "constant", "cosine" (with warm-up) or "plateau"
    warmup_epochs: int = 0
    loss: Loss = "ce"  # one of LOSSES: "ce", "ohem", "focal", "dice", "lovasz", or e.g. "ce+dice"
    label_smoothing: float = 0.0  # for the ce and ohem terms
    ohem_thresh: float | None = 0.7  # OHEM: hard = true-class probability below this (None: top-k losses)
    ohem_min_kept: int = 10_000  # OHEM: pixels kept at least, per image
    focal_gamma: float = 2.0
    class_weights: str = "none"  # "none", "inverse", "(sqrt-)median-frequency" or a JSON file
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping: int = 0  # patience in epochs on validation mIoU; 0 = off
    # "auto": bf16 on a GPU that has it and on a CPU where it measures faster (device.resolve_precision)
    precision: Precision = "auto"
    compile: Compile = "auto"  # "auto", "on" or "off"
    channels_last: bool = True
    device: str = "auto"
    seed: int = 0
    nan_policy: NanPolicy = "stop"  # "stop" or "skip" a step whose loss is NaN/Inf
    recipe: Recipe = "seed"  # the preset the other fields started from (unetkit.recipes)
    crop: tuple[int, int] | None = None  # train on random (h, w) crops of images kept at native size
    class_aware_crop: float = 0.0  # share of crops centred on a pixel of a rare class
    ema: float | None = None  # decay of an exponential moving average of the weights (validated, saved)
    time_budget: float | None = None  # seconds of training; the schedule follows the clock, epochs is a cap
    init_from: str | None = None  # start from this run folder's (or Keras file's) weights; a new optimizer
    freeze_encoder_epochs: int = 0  # keep the contracting path fixed for the first N epochs
    progressive: float = 0.0  # share of the training (epochs, or the time budget) at half the input size first

    def __post_init__(self) -> None:
        _set(self, "betas", tuple(float(b) for b in self.betas))
        if isinstance(self.augment, dict):
            _set(self, "augment", _from_dict(AugmentConfig, self.augment, "train.augment"))
        _check_choices(self)
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0 and finite, got {self.lr}")
        _check(
            self.eps > 0 and self.weight_decay >= 0 and self.warmup_epochs >= 0 and self.early_stopping >= 0,
            "eps must be > 0; weight_decay, warmup_epochs and early_stopping must be >= 0",
        )
        _check(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(
            self.ohem_thresh is None or 0.0 < self.ohem_thresh <= 1.0,
            f"ohem_thresh must be in (0, 1] or null, got {self.ohem_thresh}",
        )
        _check(self.ohem_min_kept >= 0, f"ohem_min_kept must be >= 0, got {self.ohem_min_kept}")
        _check(self.focal_gamma >= 0, f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.crop is not None:
            _set(self, "crop", tuple(int(v) for v in self.crop))
            _check(len(self.crop) == 2 and min(self.crop) > 0, f"crop must be (height, width) > 0, got {self.crop}")
        _check(0.0 <= self.class_aware_crop <= 1.0, f"class_aware_crop must be in [0, 1], got {self.class_aware_crop}")
        _check(self.ema is None or 0.0 < self.ema < 1.0, f"ema must be a decay in (0, 1), e.g. 0.999; got {self.ema}")
        _check(
            self.time_budget is None or (math.isfinite(self.time_budget) and self.time_budget > 0),
            f"time_budget must be a positive number of seconds, got {self.time_budget}",
        )
        _check(
            0.0 <= self.progressive < 1.0,
            f"progressive must be the share of training at half size, in [0, 1), got {self.progressive}",
        )
        _check(self.freeze_encoder_epochs >= 0, f"freeze_encoder_epochs must be >= 0, got {self.freeze_encoder_epochs}")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be auto, cpu or cuda[:N]; got {self.device!r}",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run folder needs to rebuild its model and preprocessing, saved as config.json."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None  # one [r, g, b] per class
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        n = self.model.n_classes
        if self.class_names is None:
            _set(self, "class_names", [f"class_{i}" for i in range(n)])
        _check(len(self.class_names) == n, f"{len(self.class_names)} class names for {n} classes")  # type: ignore[arg-type]
        if self.palette is None:
            _set(self, "palette", default_palette(n))
        palette = self.palette or []
        _check(
            len(palette) >= n and all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette),
            "palette must hold one [r, g, b] (0-255) per class",
        )
        _check(
            self.data.ignore_index is None or self.data.ignore_index >= n,
            f"ignore_index {self.data.ignore_index} is a real class id (n_classes is {n}); "
            "choose a value >= n_classes, e.g. 255",
        )

        crop = self.train.crop
        _check(
            crop is None or tuple(crop) == tuple(self.model.input_size[:2]),
            f"train.crop {crop} must equal the model's input size {tuple(self.model.input_size[:2])}: crops are "
            "what the network is trained on (--crop H W sets both)",
        )
        half = [v // 2 for v in (crop or self.model.input_size[:2])]
        multiple = self.model.size_multiple
        _check(
            not self.train.progressive or all(v % multiple == 0 for v in half),
            f"train.progressive trains at half the input size, {half[0]}x{half[1]}, which is not divisible by "
            f"{multiple}; use an input size that is a multiple of {2 * multiple}, or leave progressive at 0",
        )
        a = self.train.augment
        _check(
            all(0 <= c < n for c in a.paste_classes),
            f"augment.paste_classes {list(a.paste_classes)} must be class ids in [0, {n - 1}]",
        )
        jitter = a.brightness or a.contrast or a.saturation or a.hue
        _check(
            not (jitter and self.preprocess.normalize == "mean-std"),
            "colour augmentation (brightness/contrast/saturation) works on values in [0, 1]: "
            "use --normalize scale or percentile with it, or turn it off",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        """A config from a JSON or YAML file shaped like a run's config.json; left-out keys keep their defaults.

        A run's own config.json reads back as that run's config. ``unetkit.build_config(config_file=...)`` also
        applies the file's ``train.recipe`` under it, and keyword options over it (docs/config.md).
        """
        data = read_config_file(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist") from None
        except OSError as e:  # a file where the run folder should be, permissions, ...
            raise ConfigError(f"{path} cannot be read ({e.strerror or e}); give a run folder") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); restore it or retrain") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def describe(self) -> str:
        """A compact listing of all settings, printed at the start of training."""
        lines = []
        for section in ("model", "preprocess", "data", "train"):
            values = asdict(getattr(self, section))
            lines.append(f"{section}: " + ", ".join(f"{k}={v}" for k, v in values.items() if v is not None))
        return "\n".join(lines)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from JSON data, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON or YAML) as type ``tp``; a wrong type raises ConfigError naming ``where``."""
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(typing.get_args(tp), value, where)
    if origin in (tuple, list):
        return _coerce_sequence(origin, typing.get_args(tp), value, where)
    if origin is Literal:  # the values' type here; which values are valid, the class's own check says
        return _coerce(type(typing.get_args(tp)[0]), value, where)
    if tp is Any:
        return value
    return _coerce_scalar(tp, value, where)


def _coerce_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(arg, value, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where} must not be null")


def _coerce_sequence(origin: type, args: tuple[Any, ...], value: Any, where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    out = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


# scalar type -> the JSON values it accepts (a bool is never a number) and how a message names it
_SCALARS: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp not in _SCALARS:
        raise ConfigError(f"{where}: unsupported type {tp}")
    accepted, what = _SCALARS[tp]
    if not isinstance(value, accepted) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{where} must be {what}, got {value!r}")
    return float(value) if tp is float else value  # type: ignore[arg-type]


# Config files in: JSON or YAML in the shape of config.json, and dotted ``--set KEY=VALUE`` overrides.

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a JSON or YAML file shaped like a run's config.json (any key may be left out).

    A run folder stands for its config.json. Types and values are checked when a config is built from it.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"config file {path} must end in .json, .yaml or .yml (shaped like a run's config.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON ({e})") from None
    else:
        data = yaml_load(text, f"config file {path}")
    if data is None:  # an empty YAML file: no settings
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold settings by section (model:, preprocess:, data:, train:), "
            f"got {type(data).__name__}"
        )
    return data


def yaml_load(text: str, where: str) -> Any:
    """YAML text as Python values, with YAML 1.2's plain scalars (3e-3 a number, on/off/yes/no text)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(f"{where}: reading YAML needs PyYAML (pip install pyyaml), or give JSON") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506  # a SafeLoader: plain data only
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML ({problem}{at})") from None


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's safe loader resolving plain scalars as YAML 1.2 does: PyYAML follows YAML 1.1, where
    ``3e-3`` is text (a float needs a dot) and ``on``/``off``/``yes``/``no`` are booleans (compile: off)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def set_dotted(data: dict[str, Any], setting: str) -> None:
    """Apply one ``KEY=VALUE`` override (``--set train.lr=3e-3``) to ``data``, settings shaped like config.json.

    VALUE is read as YAML or JSON (``16``, ``3e-3``, ``true``, ``null``, ``[96, 128, 3]``); for a text setting
    it is the text as typed. A key that does not exist names the valid ones; a value of the wrong type names
    the key. Which values are valid, the config says when it is built.
    """
    key, sep, raw = setting.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set takes KEY=VALUE with a dotted key, e.g. train.lr=3e-3; got {setting!r}")
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        fields = [f.name for f in dataclasses.fields(cls)]
        if part not in fields:
            section = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"--set {setting}: {section} has no key {part!r}; valid keys: {', '.join(fields)}")
        tp = typing.get_type_hints(cls)[part]
        last, here = i == len(parts) - 1, ".".join(parts[: i + 1])
        if last and dataclasses.is_dataclass(tp):
            keys = ", ".join(f.name for f in dataclasses.fields(tp))
            raise ConfigError(f"--set {setting}: {here} is a section; set one of its keys ({keys})")
        if not last and not dataclasses.is_dataclass(tp):
            raise ConfigError(f"--set {setting}: {here} is a setting, not a section")
        if not last:
            node = data.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {setting}: {here} is not a section in the config file")
            data, cls = node, tp
    try:
        data[parts[-1]] = _coerce(tp, _parse_value(raw.strip(), tp), key.strip())
    except ConfigError as e:
        raise ConfigError(f"--set {setting}: {e}") from None


def _parse_value(text: str, tp: Any) -> Any:
    """A ``--set`` value: as typed for a text setting (unless quoted, or null where null is allowed), else
    YAML/JSON (text that does not parse stays text, and the type check names it)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    textual = all(a is str or typing.get_origin(a) is Literal for a in args if a is not type(None))
    quoted = text[:1] in ("'", '"')
    if textual and not quoted and not (text in ("null", "~") and type(None) in args):
        return text
    try:
        return yaml_load(text, "--set")
    except ConfigError:
        return text
