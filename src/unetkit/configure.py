"""Build the RunConfig of a training run from options, as `unetkit train` does, for the CLI and notebooks alike.

The order (docs/config.md): the defaults, then the recipe (``recipe=``, else the config file's
``train.recipe``, else ``seed``), then the config file (``config_file=``, shaped like a run's config.json),
then its dotted ``overrides`` (``--set train.lr=3e-3``), then every option given explicitly. Each later
layer wins over the ones before it; an option left at None keeps what the layers below it say.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, TypedDict

from .config import AugmentConfig, RunConfig, read_config_file, set_dotted
from .data.classes import ClassList, read_classes
from .data.folders import aspect_note, guess_channels, list_images
from .data.io import header_info
from .data.labelmap import apply_label_map, load_label_map
from .data.masks import load_class_names, load_palette_file
from .errors import ConfigError, UnetkitError
from .palette import default_palette
from .recipes import STRONG_AUGMENT, apply_recipe
from .timebudget import parse_duration

if TYPE_CHECKING:
    from typing_extensions import Unpack

PathLike = str | os.PathLike  # a file or folder


class TrainOptions(TypedDict, total=False):
    """The options of ``build_config``: those of `unetkit train` that define the run, by the same names
    (``--n-filters`` is ``n_filters``). Left out or None: the recipe's, the config file's or the default."""

    images: PathLike | None  # folder of training images
    masks: PathLike | None  # folder of training masks (paired by file stem)
    val_images: PathLike | None
    val_masks: PathLike | None
    val_fraction: float | None  # hold out this fraction (seeded split)
    n_classes: int | None  # required unless the classes come from a file (palette, class_names, classes, config)
    ignore_index: int | None  # mask value left out of loss and metrics
    mask_mode: str | None  # auto, index, binary, channels or palette
    palette: PathLike | None  # JSON {class name: [r, g, b]}
    class_names: PathLike | None  # JSON list of class names
    classes: PathLike | None  # classes.json (names, colours, ignore index)
    label_map: PathLike | None  # JSON label map: merge, ignore, reduce_zero_label, rename
    recursive: bool | None  # also read sub-folders
    skip_bad: bool | None  # leave out unreadable pairs instead of stopping
    cache: str | None  # auto, memory or stream
    num_workers: int | None
    model: str | None  # unet or fcn
    input_size: tuple[int, int] | None  # (height, width)
    channels: int | None  # default: 1 when every training image is grayscale, else 3
    n_filters: int | None
    depth: int | None
    dropout: float | None
    batch_norm: bool | None
    normalize: str | None
    resize: str | None
    recipe: str | None  # seed or strong (unetkit.recipes)
    epochs: int | None
    batch_size: int | None
    lr: float | None
    optimizer: str | None
    weight_decay: float | None
    schedule: str | None
    warmup_epochs: int | None
    loss: str | None
    label_smoothing: float | None
    ohem_thresh: float | None
    ohem_min_kept: int | None
    focal_gamma: float | None
    class_weights: str | None  # none, inverse, (sqrt-)median-frequency or a JSON file
    augment: bool | None  # True: the recipe's augmentation (the strong recipe's if it has none); False: none
    aug_scale: tuple[float, float] | None
    aug_colour: float | None  # brightness, contrast and saturation jitter
    aug_hue: float | None
    copy_paste: float | None  # chance a sample gets the paste_classes pixels of another sample of its batch
    paste_classes: str | Sequence[str | int] | None  # names or ids: "pedestrian,vehicle" or [11, 12]
    crop: tuple[int, int] | None  # train on random crops at native size (sets the input size)
    class_aware_crop: float | None
    ema: float | None
    progressive: float | None  # share of the training at half the input size first
    time_budget: str | float | None  # "10m", "1h30m" or seconds
    early_stopping: int | None
    precision: str | None
    compile: bool | None
    device: str | None
    seed: int | None
    nan_policy: str | None
    init_from: PathLike | None  # start from this run's weights or a Keras file
    freeze_encoder: bool | None  # with init_from: keep the encoder fixed for freeze_epochs (default 5)
    freeze_epochs: int | None
    config_file: PathLike | None  # JSON or YAML shaped like a run's config.json
    overrides: Sequence[str] | None  # dotted KEY=VALUE settings over the file, e.g. "train.lr=3e-3"


OPTIONS: tuple[str, ...] = tuple(TrainOptions.__annotations__)

# options that are TrainConfig fields of the same name
_TRAIN_FIELDS = (
    "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "warmup_epochs", "loss",
    "label_smoothing", "ohem_thresh", "ohem_min_kept", "focal_gamma", "class_weights", "early_stopping",
    "precision", "device", "seed", "nan_policy", "class_aware_crop", "ema",
    "progressive",
)  # fmt: skip
_DATA_PATHS = ("images", "masks", "val_images", "val_masks")


class SettingsError(ConfigError):
    """A setting of the config file or of a ``--set`` is wrong; the message names which."""


def build_config(*, log: Callable[[str], None] = print, **options: Unpack[TrainOptions]) -> RunConfig:
    """The RunConfig that `unetkit train` builds from the same options (``lr=3e-3`` is ``--lr 3e-3``).

    Order: defaults < recipe < config file < overrides < the options given here. ``log`` receives the
    warnings about the data (mixed grayscale and colour images, distorting resizes).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"build_config() got unknown option(s) {', '.join(unknown)}; the options: {', '.join(OPTIONS)}")
    opts: dict[str, Any] = dict.fromkeys(OPTIONS) | dict(options)
    given = _file_settings(opts)
    config = apply_recipe(RunConfig(), opts["recipe"] or _file_recipe(given) or "seed")
    if given:
        config = _layer(config, given, opts)
    return _apply_options(config, given, opts, log)


build_config.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # help() lists every option
    [inspect.Parameter("log", inspect.Parameter.KEYWORD_ONLY, default=print)]
    + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in OPTIONS],
    return_annotation=RunConfig,
)


def _file_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The config file's settings with the overrides set in them (nested dicts shaped like config.json)."""
    given: dict[str, Any] = {}
    if opts["config_file"] is not None:
        try:
            given = read_config_file(opts["config_file"])
        except ConfigError as e:
            raise SettingsError(str(e)) from None
    for setting in opts["overrides"] or ():
        try:
            set_dotted(given, setting)
        except ConfigError as e:
            raise SettingsError(str(e)) from None
    return given


def _file_recipe(given: dict[str, Any]) -> str | None:
    train = given.get("train")
    return train.get("recipe") if isinstance(train, dict) else None


def _layer(config: RunConfig, given: dict[str, Any], opts: dict[str, Any]) -> RunConfig:
    """``config`` with the file's settings and the overrides over it; an error names the file or the --set."""
    merged = _merge(_plain(config), given)
    if "class_names" in given and "n_classes" not in given.get("model", {}):
        merged["model"]["n_classes"] = len(given["class_names"] or ())
    for name in _DATA_PATHS:  # absolute, as the options' paths are: a resume from elsewhere finds them
        merged["data"][name] = _abs(merged["data"][name])
    try:
        return RunConfig.from_dict(merged)
    except ConfigError as e:
        raise SettingsError(f"{_source(opts, str(e))}: {e}") from None


def _plain(config: RunConfig) -> dict[str, Any]:
    """``config`` as config.json data, less the class names and colours that only follow n_classes."""
    data = asdict(config)
    if _auto_classes(config):
        del data["class_names"], data["palette"]
    return data


def _auto_classes(config: RunConfig) -> bool:
    n = config.model.n_classes
    return config.class_names == [f"class_{i}" for i in range(n)] and config.palette == default_palette(n)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def _source(opts: dict[str, Any], message: str) -> str:
    """Which of the config file and the --set overrides a message is about (the --set that names its key)."""
    sets = list(opts["overrides"] or ())
    named = [s for s in sets if re.search(rf"\b{re.escape(s.partition('=')[0].split('.')[-1])}\b", message)]
    parts = [f"--set {s}" for s in named] or (
        [f"config file {opts['config_file']}"] if opts["config_file"] is not None else [f"--set {s}" for s in sets]
    )
    return " ".join(parts)


def _apply_options(config: RunConfig, given: dict[str, Any], opts: dict[str, Any], log: Callable[[str], None]):
    """``config`` with every option the user gave; its errors name the Python fields (the CLI renames them)."""
    names, palette, labels = _classes(opts)
    n_classes = labels.get("n_classes", opts["n_classes"] if opts["n_classes"] is not None else len(names or ()))
    if not n_classes and "n_classes" not in given.get("model", {}) and "class_names" not in given:
        raise UnetkitError(
            "give --n-classes N (or a --palette / --class-names file that lists the classes, or a --config file "
            "that sets model.n_classes)"
        )
    if names is None and not _auto_classes(config):  # the file's, unless the options name others
        names, palette = config.class_names, config.palette
    model = _model_settings(config, given, opts, log) | ({"n_classes": n_classes} if n_classes else {})
    preprocess = {k: opts[k] for k in ("resize", "normalize") if opts[k] is not None}
    return replace(
        config,
        model=replace(config.model, **model),
        data=replace(config.data, **_data_settings(opts, labels)),
        train=replace(config.train, **_train_settings(config, opts, names or config.class_names or [])),
        preprocess=replace(config.preprocess, **preprocess),
        class_names=names,
        palette=palette,
    )


def _train_settings(config: RunConfig, opts: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """TrainConfig fields from the options given (``names``: the class names paste classes may use)."""
    t = {k: opts[k] for k in _TRAIN_FIELDS if opts[k] is not None} | _time_budget(opts) | _init_options(opts)
    if opts["compile"] is not None:
        t["compile"] = "on" if opts["compile"] else "off"
    if opts["crop"] is not None:
        t["crop"] = tuple(opts["crop"])
    augment = _augment(config.train.augment, opts, names)
    if augment is not None:
        t["augment"] = augment
    if opts["recipe"] is not None:  # over the file's train.recipe too: the settings started from this one
        t["recipe"] = opts["recipe"]
    return t


def _classes(opts: dict[str, Any]) -> tuple[list[str] | None, list | None, dict[str, Any]]:
    """The class names and colours the options give (None: not given), and what --classes/--label-map set."""
    names, palette = None, None
    if opts["palette"] is not None:
        names, palette = load_palette_file(opts["palette"])
    if opts["class_names"] is not None:
        names = load_class_names(opts["class_names"])
    labels = _labels_options(opts, names, palette)
    if labels:
        names, palette = labels["class_names"], labels["palette"]
    return names, palette, labels


def _model_settings(
    config: RunConfig, given: dict[str, Any], opts: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """ModelConfig fields from the options: the input size (from --crop, --input-size, --channels or a survey of
    the training images' headers) and whichever of name, n_filters, depth, dropout and batch_norm were given."""
    h, w = opts["input_size"] or config.model.input_size[:2]
    if opts["crop"] is not None:  # crops are what the network sees: the crop is the input size
        if opts["input_size"] is not None and tuple(opts["input_size"]) != tuple(opts["crop"]):
            raise UnetkitError("--crop H W sets the network's input size; leave out --input-size (or give the same)")
        h, w = opts["crop"]
    channels = opts["channels"]
    if channels is None and "input_size" in given.get("model", {}):
        channels = config.model.input_size[2]
    if channels is None:
        images = opts["images"] if opts["images"] is not None else config.data.images
        recursive = bool(opts["recursive"]) or config.data.recursive
        depth = opts["depth"] or config.model.depth
        channels = _survey_images(images, (h, w), depth, recursive, log) or config.model.input_size[2]
    m = {"input_size": (h, w, channels)}
    m |= {k: opts[k] for k in ("depth", "dropout", "batch_norm", "n_filters") if opts[k] is not None}
    if opts["model"] is not None:
        m["name"] = opts["model"]
    return m


def _data_settings(opts: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """DataConfig fields from the options given (paths absolute: a resume from another directory finds them)."""
    d: dict[str, Any] = {k: _abs(opts[k]) for k in _DATA_PATHS if opts[k] is not None}
    d |= {k: opts[k] for k in ("val_fraction", "cache", "num_workers") if opts[k] is not None}
    d |= {k: True for k in ("recursive", "skip_bad") if opts[k]}
    if opts["mask_mode"] is not None or opts["palette"] is not None:
        d["mask_mode"] = opts["mask_mode"] or "palette"
    if opts["palette"] is not None:
        d["palette_file"] = str(opts["palette"])
    if "ignore_index" in labels:
        d["ignore_index"] = labels["ignore_index"]
    elif opts["ignore_index"] is not None:
        d["ignore_index"] = opts["ignore_index"]
    if opts["label_map"] is not None:
        d["label_map_file"], d["label_map"] = str(opts["label_map"]), labels.get("label_map")
    return d


def _augment(current: AugmentConfig, opts: dict[str, Any], names: list[str]) -> AugmentConfig | None:
    """The augmentation the options ask for (None: none given). --augment: the recipe's, or the strong
    recipe's if it has none; --no-augment: none; the scale range, colour jitter, hue and copy-paste over that."""
    augment = None
    if opts["augment"] is not None:
        augment = (current if current.enabled else STRONG_AUGMENT) if opts["augment"] else AugmentConfig()
    a: dict[str, Any] = {}
    if opts["aug_scale"] is not None:
        a["scale"] = tuple(opts["aug_scale"])
    if opts["aug_colour"] is not None:
        a["brightness"] = a["contrast"] = a["saturation"] = opts["aug_colour"]
    if opts["aug_hue"] is not None:
        a["hue"] = opts["aug_hue"]
    if opts["copy_paste"] is not None:
        a["copy_paste"] = opts["copy_paste"]
    if opts["paste_classes"] is not None:
        a["paste_classes"] = class_ids(opts["paste_classes"], names)
    return replace(augment or current, **a) if a else augment


def class_ids(classes: str | Sequence[str | int], names: list[str]) -> tuple[int, ...]:
    """Class ids from names or ids (``"pedestrian,12"`` or ``["pedestrian", 12]``); a ConfigError names an
    unknown class and lists the known ones."""
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    ids = []
    for item in (str(i).strip() for i in items):
        if item.isdigit():
            ids.append(int(item))
        elif item in names:
            ids.append(names.index(item))
        else:
            raise ConfigError(f"unknown class {item!r} in the paste classes; the classes are: {', '.join(names)}")
    return tuple(ids)


def _time_budget(opts: dict[str, Any]) -> dict[str, Any]:
    """--time-budget as TrainConfig fields: the budget in seconds, and epochs a cap when not given."""
    if opts["time_budget"] is None:
        return {}
    t: dict[str, Any] = {"time_budget": parse_duration(opts["time_budget"])}
    if opts["epochs"] is None:
        t["epochs"] = 100_000  # the budget decides; --epochs is then a cap
    return t


def _init_options(opts: dict[str, Any]) -> dict[str, Any]:
    """--init-from, --freeze-encoder and --freeze-epochs as TrainConfig fields."""
    t: dict[str, Any] = {}
    if opts["init_from"] is not None:
        t["init_from"] = str(opts["init_from"])
    if opts["freeze_encoder"] or opts["freeze_epochs"] is not None:
        if opts["init_from"] is None:
            raise UnetkitError(
                "--freeze-encoder keeps pretrained weights fixed: give --init-from RUN_OR_KERAS_FILE too"
            )
        t["freeze_encoder_epochs"] = opts["freeze_epochs"] if opts["freeze_epochs"] is not None else 5
    return t


def _labels_options(opts: dict[str, Any], names: list[str] | None, palette: list | None) -> dict[str, Any]:
    """What --classes FILE and --label-map FILE set: class names, colours, ignore index, id lookup table."""
    classes_file, map_file = opts["classes"], opts["label_map"]
    if classes_file is None and map_file is None:
        return {}
    if classes_file is not None:
        source = read_classes(classes_file)
    elif names is not None:
        source = ClassList(names, palette or [], opts["ignore_index"])
    elif opts["n_classes"] is not None:  # with a label map, --n-classes counts the source ids
        source = ClassList([f"class_{i}" for i in range(opts["n_classes"])], ignore_index=opts["ignore_index"])
    else:
        raise UnetkitError("--label-map needs the source classes: give --classes classes.json or --n-classes N")
    out: dict[str, Any] = {"class_names": source.names, "palette": source.colors, "n_classes": len(source)}
    if source.ignore_index is not None:
        out["ignore_index"] = source.ignore_index
    if map_file is not None:
        mapped = apply_label_map(load_label_map(map_file), source)
        c = mapped.classes
        out = {"class_names": c.names, "palette": c.colors, "n_classes": len(c), "label_map": mapped.lut}
        out["ignore_index"] = c.ignore_index
    return out


def _survey_images(
    images: Any, input_size: tuple[int, int], depth: int, recursive: bool, log: Callable[[str], None]
) -> int | None:
    """The input channels for the training images (1 when all are grayscale, else 3), from every file's
    header; says so when grayscale and colour images are mixed, or when resizing distorts them. None: no images."""
    if images is None:
        return None
    infos = [header_info(f) for f in list_images(images, recursive=recursive)]
    channels, note = guess_channels(infos)
    for line in (note, aspect_note(infos, input_size, 2 ** (depth - 1))):
        if line:
            log(f"warning: {line}")
    return channels


def _abs(p: PathLike | None) -> str | None:
    return os.path.abspath(os.path.expanduser(p)) if p is not None else None
