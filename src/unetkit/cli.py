"""The `unetkit` command: a thin shell that maps options to a config and calls the Python API.

Each command imports the API it calls inside its own body: ``unetkit --help`` stays fast and
``unetkit serve`` or ``predict`` never load the training loop (the CLI is the one module that
dispatches to every other, and nothing imports it).
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

from .config import (
    LOSSES,
    CacheMode,
    MaskMode,
    ModelName,
    NanPolicy,
    Normalize,
    Optimizer,
    Precision,
    PredictMode,
    Recipe,
    ResizeMode,
    Schedule,
)
from .errors import UnetkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The seed's U-Net as a toolkit: train, evaluate, predict, export and serve.",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Built-in data sets.")
app.add_typer(datasets_app, name="datasets")

F = TypeVar("F", bound=Callable[..., Any])


def _one_of(choices: Any, notes: dict[str, str] | None = None) -> str:
    """Help text listing a ``Literal`` type's values ("a, b or c"), some with a note: "seed (the tutorial)"."""
    values = typing.get_args(choices)
    unknown = set(notes or ()) - set(values)
    assert not unknown, f"notes for values that are not choices: {unknown}"
    told = [f"{v} ({notes[v]})" if notes and v in notes else v for v in values]
    return ", ".join(told[:-1]) + " or " + told[-1] if len(told) > 1 else told[0]


LOSS_HELP = (
    ", ".join(x for x in LOSSES if "+" not in x)
    + ", or a pixel term + a region term: "
    + ", ".join(x for x in LOSSES if "+" in x)
)
TTA_HELP = "test-time augmentation: flip, or e.g. flip,scales=0.75,1,1.25 (logits averaged over the views)"
PRECISION_HELP = "fp32 (default: the model's own masks), bf16 (PyTorch autocast) or int8 (the run's int8 ONNX file)"

# Options that evaluate, predict and serve share, declared once.
Tta = Annotated[str | None, typer.Option(help=TTA_HELP)]
PredictPrecision = Annotated[str | None, typer.Option(help=PRECISION_HELP)]
ShownClasses = Annotated[Path | None, typer.Option(help="classes.json: names and colours to show")]
CheckAgreement = Annotated[int, typer.Option(help="compare masks with fp32 on the first N images")]
MinSize = Annotated[int | None, typer.Option(help="remove components under N pixels (every class)")]
FillHoles = Annotated[list[str] | None, typer.Option(help="fill holes in this class (id or name; repeatable)")]
KeepLargest = Annotated[list[str] | None, typer.Option(help="keep this class's largest component only")]


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"unetkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """The seed's U-Net as a toolkit: train, evaluate, predict, export and serve."""


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console
    from rich.markup import escape

    # the message holds user text (paths, "[r, g, b]"): escaped, so rich shows it as written
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _os_error_message(e: OSError) -> str:
    """One paragraph for a file-system error that no command turned into a message of its own."""
    where = f" {e.filename}" if e.filename else ""
    return (
        f"cannot use{where}: {e.strerror or e}; check the path (a folder where a file is expected, "
        "or the reverse) and its permissions"
    )


def guarded(fn: F) -> F:
    """Turn user errors (and out-of-memory) into one paragraph and a non-zero exit, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UnetkitError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory: lower --batch-size or --input-size")
        except OSError as e:
            _fail(_os_error_message(e))
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                batch = kwargs.get("batch_size")
                hint = f" (try --batch-size {max(1, batch // 2)})" if isinstance(batch, int) and batch > 1 else ""
                _fail(f"the device ran out of memory: lower --batch-size{hint} or --input-size")
            raise

    return wrapper  # type: ignore[return-value]


def console():
    """Plain output: no markup (user text such as "data/br[red]ack" prints as written) and no wrapping
    (a log line redirected to a file stays one line)."""
    from rich.console import Console

    return Console(highlight=False, markup=False, soft_wrap=True)


@app.command()
@guarded
def info(
    input_size: Annotated[tuple[int, int, int], typer.Option(help="H W C")] = (96, 128, 3),
    n_filters: int = 32,
    n_classes: int = 23,
    model: Annotated[str, typer.Option(help=_one_of(ModelName))] = "unet",
    depth: int = 5,
    batch_norm: bool = False,
    run: Annotated[Path | None, typer.Option(help="describe the model of this run folder instead")] = None,
) -> None:
    """Print a Keras-style summary of the model (layer, output shape, parameters)."""
    from .config import ModelConfig, RunConfig
    from .model import FCN, UNet, format_summary
    from .run import build_model

    if run is not None:
        if run.is_file():
            raise UnetkitError(
                f"--run takes a run folder, and {run} is a file; give the folder it came from "
                "(an exported .onnx file is described by `unetkit export`'s report)"
            )
        cfg = RunConfig.load(run / "config.json").model
    else:
        cfg = ModelConfig(
            name=cast(ModelName, model),  # ModelConfig checks it is one on creation
            input_size=input_size,
            n_filters=n_filters,
            n_classes=n_classes,
            depth=depth,
            batch_norm=batch_norm,
        )
    console().print(f'Model: "{cfg.name}"')
    console().print(format_summary(cast("UNet | FCN", build_model(cfg))))  # one of model.MODELS


@datasets_app.command("synthetic")
@guarded
def datasets_synthetic(
    out: Annotated[Path, typer.Option(help="folder to write image/ and mask/ into")],
    count: int = 200,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
) -> None:
    """Write the built-in procedural driving scenes as image/mask folders (+ classes.json palette)."""
    from .data.synthetic import write_dataset

    if out.exists() and not out.is_dir():
        raise UnetkitError(f"--out {out} is a file; give a folder to write image/ and mask/ into")
    path = write_dataset(out, count, height, width, seed)
    console().print(f"wrote {count} scenes to {path}/image and {path}/mask (palette: {path}/classes.json)")


@datasets_app.command("import")
@guarded
def datasets_import(
    fmt: Annotated[
        str, typer.Argument(metavar="FORMAT", help="coco, labelme, cvat-mask, voc, cityscapes, camvid or label-studio")
    ],
    sources: Annotated[list[Path], typer.Argument(metavar="SOURCE...", help="the export's files and folders")],
    out: Annotated[Path, typer.Option(help="folder to write images/, masks/ and classes.json into")],
    background: Annotated[
        bool, typer.Option("--background/--no-background", help="coco: unlabelled pixels are class 0 (else ignored)")
    ] = True,
    line_width: Annotated[int, typer.Option(help="labelme: width of line shapes in pixels")] = 10,
    label_map: Annotated[
        Path | None, typer.Option(help="JSON label map (merge, ignore, reduce_zero_label, rename)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing images/ and masks/ in --out")] = False,
) -> None:
    """Convert a labelling tool's export into index masks + classes.json (see docs/labels.md)."""
    from .data.importers import import_dataset
    from .data.labelmap import load_label_map

    lm = load_label_map(label_map) if label_map is not None else None
    result = import_dataset(
        fmt, sources, out, background=background, line_width=line_width, label_map=lm, overwrite=overwrite
    )
    console().print(
        f"wrote {result.count} image/mask pairs ({len(result.classes)} classes) to {out}/images and {out}/masks; "
        f"classes: {out}/classes.json\nnext: unetkit check-data --images {out}/images --masks {out}/masks "
        f"--classes {out}/classes.json"
    )


@app.command("check-data")
@guarded
def check_data_command(
    images: Annotated[Path, typer.Option(help="folder of training images")],
    masks: Annotated[Path, typer.Option(help="folder of training masks")],
    n_classes: Annotated[
        int | None, typer.Option(help="number of classes (default: from --classes or the masks)")
    ] = None,
    ignore_index: Annotated[int | None, typer.Option(help="mask value that is not a class")] = None,
    mask_mode: Annotated[str, typer.Option(help=_one_of(MaskMode))] = "auto",
    classes: Annotated[Path | None, typer.Option(help="classes.json (names, colours, ignore index)")] = None,
    label_map: Annotated[Path | None, typer.Option(help="JSON label map applied before counting")] = None,
    val_images: Path | None = None,
    val_masks: Path | None = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the class distribution as a PNG")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="write suggested class weights for train --class-weights")
    ] = None,
    weights_method: Annotated[str, typer.Option(help="median-frequency or inverse")] = "median-frequency",
    progress: bool = True,
) -> None:
    """Check a data set before training: pairing, sizes, mask values, classes, duplicates, statistics."""
    from .data.check import check_and_write, format_report

    bar = _progress_bar(progress)
    with bar as advance:
        report = check_and_write(
            images, masks, n_classes=n_classes, ignore_index=ignore_index, mask_mode=mask_mode,
            classes_file=classes, label_map_file=label_map, val_images=val_images, val_masks=val_masks,
            json_path=json_out, plot_path=plot, weights_path=weights, weights_method=weights_method, progress=advance,
        )  # fmt: skip
    console().print(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


def _progress_bar(enabled: bool):
    """A context manager yielding ``advance(n)`` (a rich progress bar on a terminal, else nothing)."""
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(None)

    @contextlib.contextmanager
    def bar():
        from rich.progress import Progress

        with Progress(transient=True) as p:
            task = p.add_task("checking", total=None)
            yield lambda n: p.advance(task, n)

    return bar()


_FIELD_OPTIONS = re.compile(
    r"(?<![\w.-])(val_images|val_masks|val_fraction|n_filters|n_classes|ignore_index|batch_size|warmup_epochs|"
    r"early_stopping|weight_decay|mask_mode|nan_policy|input_size|class_weights|num_workers|palette_file)(?![\w])"
    r"|(?<![\w.-])(epochs|lr|depth|dropout|optimizer|schedule|loss|precision|cache|resize)(?= must)"
)


def _option_names(message: str) -> str:
    """A config message with the Python field names the user never typed turned into options (val_images ->
    --val-images)."""
    message = message.replace("input channels must", "--channels must")
    return _FIELD_OPTIONS.sub(lambda m: "--" + (m.group(1) or m.group(2)).replace("_", "-"), message)


def _train_config(opts: dict[str, Any], log: Callable[[str], None] | None = None) -> Any:
    """``build_config`` with the command's options of the same names; its errors name the options (a config
    file's or a --set's errors name those already)."""
    from .configure import OPTIONS, SettingsError, build_config
    from .errors import ConfigError

    try:
        return build_config(log=log or console().print, **{k: opts[k] for k in OPTIONS if k in opts})
    except SettingsError:
        raise
    except ConfigError as e:
        raise ConfigError(_option_names(str(e))) from None


# The options of `train`, each declared once: (type with its typer.Option, default). `compare` takes a subset.
# A default of None means "the recipe's, the config file's or the built-in value" (see unetkit.configure).
REQUIRED = inspect.Parameter.empty


def _opt(tp: Any, help: str | None = None, *decls: str, default: Any = None, **kw: Any) -> tuple[Any, Any]:
    return Annotated[tp, typer.Option(*decls, help=help, **kw)], default


TRAIN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "images": _opt(Path | None, "folder of training images"),
    "masks": _opt(Path | None, "folder of training masks (paired by file stem)"),
    "out": _opt(Path | None, "run folder to write"),
    "config_file": _opt(Path | None, "JSON or YAML settings shaped like a run's config.json", "--config"),
    "overrides": _opt(list[str] | None, "set a dotted key, e.g. train.lr=3e-3 (repeatable)", "--set"),
    "print_config": _opt(bool, "print the resolved config as JSON and exit", "--print-config", default=False),
    "n_classes": _opt(int | None, "number of classes"),
    "val_images": _opt(Path | None),
    "val_masks": _opt(Path | None),
    "val_fraction": _opt(float | None, "hold out this fraction (seeded split)"),
    "ignore_index": _opt(int | None, "mask value left out of loss and metrics"),
    "input_size": _opt(tuple[int, int] | None, "H W (multiples of 16)"),
    "channels": _opt(int | None, "input channels (default: 1 for grayscale data, else 3)"),
    "n_filters": _opt(int | None),
    "model": _opt(str | None, _one_of(ModelName, {"unet": "the seed", "fcn": "the baseline"})),
    "depth": _opt(int | None, "levels (seed: 5)"),
    "dropout": _opt(float | None, "dropout in the deepest two blocks (seed: 0.3)"),
    "batch_norm": _opt(bool | None, None, "--batch-norm/--no-batch-norm"),
    "epochs": _opt(int | None, "total epochs (with --resume: the new total)"),
    "batch_size": _opt(int | None),
    "lr": _opt(float | None),
    "optimizer": _opt(str | None, _one_of(Optimizer)),
    "weight_decay": _opt(float | None),
    "schedule": _opt(str | None, _one_of(Schedule)),
    "warmup_epochs": _opt(int | None),
    "loss": _opt(str | None, LOSS_HELP),
    "label_smoothing": _opt(float | None, "cross-entropy label smoothing (0: off)"),
    "ohem_thresh": _opt(float | None, "OHEM: keep pixels whose true-class probability is below"),
    "ohem_min_kept": _opt(int | None, "OHEM: keep at least this many pixels per image"),
    "focal_gamma": _opt(float | None, "focal loss exponent"),
    "class_weights": _opt(str | None, "none, inverse, median-frequency, sqrt-median-frequency or a JSON file"),
    "augment": _opt(bool | None, "the recipe's augmentation", "--augment/--no-augment"),
    "aug_scale": _opt(tuple[float, float] | None, "random scale range MIN MAX, e.g. 0.5 2.0 (zoom out/in)"),
    "aug_colour": _opt(float | None, "brightness/contrast/saturation jitter, e.g. 0.3"),
    "aug_hue": _opt(float | None, "hue jitter as a fraction of the colour wheel, e.g. 0.05"),
    "copy_paste": _opt(float | None, "chance a sample gets the --paste-classes pixels of another one, e.g. 0.5"),
    "paste_classes": _opt(str | None, "classes copy-paste moves: names or ids, comma-separated (pedestrian,car)"),
    "crop": _opt(
        tuple[int, int] | None, "train on random H W crops of the images at native size (sets the input size)"
    ),
    "class_aware_crop": _opt(float | None, "share of crops centred on a rare-class pixel (with --crop), e.g. 0.5"),
    "ema": _opt(float | None, "average the weights with this decay, e.g. 0.999"),
    "progressive": _opt(
        float | None, "progressive resizing: train this share of the epochs (or budget) at half size first, e.g. 0.7"
    ),
    "time_budget": _opt(str | None, "train for this long (e.g. 10m, 600, 1h30m); the schedule follows the clock"),
    "early_stopping": _opt(int | None, "patience in epochs (0: off)"),
    "mask_mode": _opt(str | None, _one_of(MaskMode)),
    "palette": _opt(Path | None, "JSON {class name: \\[r, g, b]}"),
    "class_names": _opt(Path | None, "JSON list of class names"),
    "classes": _opt(Path | None, "classes.json (names, colours, ignore index)"),
    "label_map": _opt(Path | None, "JSON label map: merge, ignore, reduce_zero_label, rename"),
    "normalize": _opt(str | None, _one_of(Normalize, {"scale": "the seed"})),
    "resize": _opt(str | None, "image resize: " + _one_of(ResizeMode)),
    "recipe": _opt(str | None, _one_of(Recipe, {"seed": "the tutorial exactly"})),
    "precision": _opt(str | None, _one_of(Precision)),
    "compile": _opt(bool | None, None, "--compile/--no-compile"),
    "device": _opt(str | None, "auto, cpu or cuda"),
    "seed": _opt(int | None),
    "nan_policy": _opt(str | None, _one_of(NanPolicy) + " on a NaN/Inf loss"),
    "resume": _opt(Path | None, "continue this run folder"),
    "cache": _opt(
        str | None,
        _one_of(
            CacheMode,
            {"auto": "stream when the uint8 cache would not fit in memory", "stream": "decode on DataLoader workers"},
        ),
    ),
    "num_workers": _opt(int | None, "DataLoader workers per process with --cache stream"),
    "nproc": _opt(
        int | None, "run N processes on this machine via torchrun (one per GPU; --batch-size stays the global batch)"
    ),
    "log": _opt(list[str] | None, "also log to tensorboard and/or mlflow (repeat or comma-separate)", "--log"),
    "log_images_every": _opt(int, "validation image panel every N epochs (0: none)", default=5),
    "init_from": _opt(Path | None, "start from this run's weights or a Keras .h5/.keras file (a new run)"),
    "freeze_encoder": _opt(bool, "with --init-from: keep the encoder fixed at first", default=False),
    "freeze_epochs": _opt(int | None, "epochs the encoder stays frozen (default 5)"),
    "folds": _opt(int | None, "k-fold cross-validation: K runs under --out"),
    "fold": _opt(int | None, "with --folds: train only fold k (0-based)"),
    "progress": _opt(bool, default=True),
    "overwrite": _opt(bool, "replace the run already in --out (its files are deleted)", default=False),
    "recursive": _opt(bool, "also read sub-folders (images/city1/a.png pairs with masks/city1/a.png)", default=False),
    "skip_bad": _opt(bool, "leave out unreadable or invalid pairs (listed) instead of stopping", default=False),
}

# `compare`: the data, model and budget options it shares with `train`, a few of them required or told anew
COMPARE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "images": _opt(Path, "folder of training images", default=REQUIRED),
    "masks": _opt(Path, "folder of training masks (paired by file stem)", default=REQUIRED),
    "out": _opt(Path, "folder for both run folders, the table and the picture", default=REQUIRED),
    **{
        name: TRAIN_OPTIONS[name]
        for name in "n_classes val_images val_masks val_fraction ignore_index input_size channels n_filters".split()
    },
    "batch_norm": _opt(bool | None, "batch norm in the conv blocks (strong: on)", "--batch-norm/--no-batch-norm"),
    "epochs": _opt(int | None, "epochs for each model"),
    **{name: TRAIN_OPTIONS[name] for name in "batch_size lr augment recipe mask_mode palette class_names".split()},
    "tolerance": _opt(int, "boundary F1 tolerance in pixels", default=2),
    "examples": _opt(int, "validation images in the picture", default=4),
    **{name: TRAIN_OPTIONS[name] for name in "precision device seed progress".split()},
    "overwrite": _opt(bool, "replace the runs already in --out", default=False),
}


def _declare(fn: Callable[..., Any], options: dict[str, tuple[Any, Any]], *first: inspect.Parameter) -> None:
    """Give command ``fn(**opts)`` the signature typer reads its options from: ``first``, then ``options``."""
    params = [*first] + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=tp, default=default)
        for name, (tp, default) in options.items()
    ]
    fn.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]


@app.command()
@guarded
def train(ctx: typer.Context, **opts: Any) -> None:
    """Train a model on a folder of images and a folder of masks; writes a run folder."""
    import shlex

    from . import distributed
    from .loggers import check_available
    from .run import claim_run_folder
    from .train import fit

    loggers = check_available(opts["log"] or [])  # a missing package is reported before anything else
    command = "unetkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    extra = dict(loggers=loggers, log_images_every=opts["log_images_every"], command=command)
    resume, out, progress, overwrite = opts["resume"], opts["out"], opts["progress"], opts["overwrite"]
    if opts["print_config"]:  # touches no run folder: the config goes to stdout, warnings to stderr
        config = _resume_config(ctx, resume, opts, _warn) if resume is not None else _train_config(opts, _warn)
        typer.echo(config.to_json())
        return
    if resume is None and out is None:
        raise UnetkitError("give --out RUN_FOLDER (where weights, config and metrics are written)")
    if resume is None and not overwrite and distributed.is_main():
        claim_run_folder(out, create=False)  # refuses an existing run at once
    say = console().print if distributed.is_main() else _quiet  # under torchrun only rank 0 prints
    if opts["nproc"] is not None:  # check the settings here: a worker's error would come back buried in torchrun's
        config = _resume_config(ctx, resume, opts, _quiet) if resume is not None else _train_config(opts)
        distributed.local_batch_size(config.train.batch_size, opts["nproc"])
        raise typer.Exit(distributed.launch(sys.argv[1:], opts["nproc"], log=console().print))
    if resume is not None:
        config = _resume_config(ctx, resume, opts, say)
        say(f"resuming {resume} up to {config.train.epochs} epochs")
        result = fit(config, resume, resume=True, progress=progress, log=say, **extra)
    else:
        config = _train_config(opts)
        say(config.describe())
        if opts["folds"] is not None or opts["fold"] is not None:
            kwargs = dict(progress=progress, log=say, overwrite=overwrite, **extra)
            _train_folds(config, out, opts["folds"], opts["fold"], **kwargs)
            return
        result = fit(config, out, progress=progress, log=say, overwrite=overwrite, **extra)
    if distributed.is_main():
        _after_training(result)


_declare(
    train, TRAIN_OPTIONS, inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
)


def _warn(text: str) -> None:
    """A line for the user on stderr (stdout holds what --print-config prints)."""
    from rich.console import Console

    Console(stderr=True, highlight=False, markup=False, soft_wrap=True).print(text)


def _train_folds(config: Any, out: Path, folds: int | None, fold: int | None, **kwargs: Any) -> None:
    """--folds K [--fold k]: K runs under OUT with OUT/splits.json; --fold alone reads K from that file."""
    from .folds import SPLITS, load_splits, train_folds

    if folds is None:
        if not (out / SPLITS).exists():
            raise UnetkitError(f"--fold needs --folds K (or an existing {out / SPLITS} to take K from)")
        folds = len(load_splits(out / SPLITS))
    train_folds(config, out, folds, fold=fold, **kwargs)
    console().print(
        f"fold summary: {out / 'folds.json'}; combine the folds with `unetkit ensemble {out}/fold_* --out ENS`"
    )


# how to run, not what the run is (a resumed run may log to other places)
_RESUME_KEEPS = ("progress", "resume", "nproc", "overwrite", "out", "log", "log_images_every", "print_config")


def _resume_config(ctx: typer.Context, run: Path, opts: dict[str, Any], say: Callable[..., None]) -> Any:
    """The config to resume ``run`` with: the options that may change on resume applied (and said), those
    that define the model or the recipe refused, data paths checked (they come from the run's config)."""
    from .errors import ConfigError, DataError
    from .train import RESUME_DATA, RESUME_TRAIN, resume_config

    given = [name for name in opts if name not in _RESUME_KEEPS and _given(ctx, name)]
    fixed = [n for n in given if n not in RESUME_TRAIN and n not in RESUME_DATA]
    if fixed:
        listed = ", ".join(_flag(n) for n in fixed)
        raise ConfigError(
            f"{listed} cannot change on --resume: the checkpoint in {run} was trained with the model and recipe "
            f"in {run / 'config.json'}. Leave {'it' if len(fixed) == 1 else 'them'} out to continue that run, or "
            f"start a new one (--out NEW_RUN; --init-from {run} starts from its weights)"
        )
    old = _load_run_config(run)
    if not (run / "last.safetensors").exists():  # before reading any data
        from .errors import RunError
        from .train import _nothing_to_resume

        raise RunError(_nothing_to_resume(run))
    changes = {n: opts[n] for n in given}
    if changes.get("time_budget") is not None:
        from .timebudget import parse_duration

        changes["time_budget"] = parse_duration(changes["time_budget"])
    if opts.get("compile") is not None and "compile" in changes:
        changes["compile"] = "on" if opts["compile"] else "off"
    config = resume_config(run, **changes)
    for name in given:
        section = "train" if name in RESUME_TRAIN else "data"
        before, after = getattr(getattr(old, section), name), getattr(getattr(config, section), name)
        if before != after:
            say(f"on resume: --{name.replace('_', '-')} {before} -> {after} (recorded in {run / 'config.json'})")
    for name in ("images", "masks", "val_images", "val_masks"):
        path = getattr(config.data, name)
        if path and name not in given and not Path(path).exists():
            option = "--" + name.replace("_", "-")
            raise DataError(
                f"{option} {path} does not exist; the path comes from {run / 'config.json'}: the data was moved, "
                f"or the run was started from another directory. Give {option} DIR to point at it"
            )
    return config


def _flag(name: str) -> str:
    """The option as typed: n_filters -> --n-filters, config_file -> --config."""
    return {"config_file": "--config", "overrides": "--set"}.get(name, "--" + name.replace("_", "-"))


def _given(ctx: typer.Context, name: str) -> bool:
    """True when the user typed option ``name`` (not its default)."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")


def _load_run_config(run: Path) -> Any:
    from .config import RunConfig

    if run.is_file():
        raise UnetkitError(f"--resume takes a run folder, and {run} is a file")
    return RunConfig.load(run / "config.json")


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """A print that prints nothing (ranks other than 0)."""


def _after_training(result: Any) -> None:
    run_dir = result.run_dir
    validated = any(row.get("val_miou") is not None for row in result.history)
    best = ""
    if result.best_miou is not None:
        best = (
            f" best validation mIoU {result.best_miou:.4f}"
            if validated
            else f" training mIoU {result.best_miou:.4f} (last epoch, kept as the weights: no validation data)"
        )
    console().print(f"done:{best}. Run folder: {run_dir}")
    console().print(
        f"next: unetkit evaluate {run_dir} --images DIR --masks DIR | unetkit predict {run_dir} IMAGES... --out DIR"
    )


@app.command()
@guarded
def compare(**opts: Any) -> None:
    """Train U-Net and the FCN baseline with the same data, budget and recipe; write a table and a picture."""
    from .compare import compare as run_compare

    config = _train_config(opts)
    console().print(config.describe())
    run_compare(
        config,
        opts["out"],
        tolerance=opts["tolerance"],
        examples=opts["examples"],
        progress=opts["progress"],
        log=console().print,
        overwrite=opts["overwrite"],
    )


_declare(compare, COMPARE_OPTIONS)


def _say(text: str) -> None:
    """Print user text as it is (paths may hold [brackets]), whole lines even when redirected."""
    console().print(text, markup=False, soft_wrap=True)


def _postprocess(model: Path, min_size: int | None, fill_holes: list[str] | None, keep_largest: list[str] | None):
    """The PostProcess the options ask for (None when none), with class names read from the model."""
    if not (min_size or fill_holes or keep_largest):
        return None
    from .postprocess import from_options
    from .predict import open_predictor

    p = open_predictor(model, device="cpu") if model.suffix.lower() == ".onnx" else None
    if p is not None:
        config = p.config
    else:
        from .config import RunConfig

        if not (model / "config.json").is_file():
            raise UnetkitError(f"{model} is not a run folder (no config.json) or an .onnx file")
        config = RunConfig.load(model / "config.json")
    return from_options(min_size, fill_holes, keep_largest, config.class_names or [], config.model.n_classes)


@app.command()
@guarded
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder (or .onnx file)")],
    images: Annotated[Path, typer.Option(help="folder of images")],
    masks: Annotated[Path, typer.Option(help="folder of masks")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics as JSON")] = None,
    mask_mode: str | None = None,
    label_map: Annotated[Path | None, typer.Option(help="JSON label map (default: the run's own)")] = None,
    classes: Annotated[Path | None, typer.Option(help="classes.json of the masks' source classes")] = None,
    device: str = "auto",
    precision: PredictPrecision = None,
    check_agreement: CheckAgreement = 0,
    min_size: MinSize = None,
    fill_holes: FillHoles = None,
    keep_largest: KeepLargest = None,
    tta: Tta = None,
    confusion: Annotated[
        Path | None, typer.Option(help="write the row-normalised confusion matrix as PNG (counts as .csv beside it)")
    ] = None,
    per_image: Annotated[
        Path | None, typer.Option(help="write each image's pixel accuracy and mIoU as CSV, worst first")
    ] = None,
) -> None:
    """aAcc, mAcc, mIoU, fwIoU and per-class IoU, Dice, precision, recall over a folder pair (and post-processing)."""
    from .evaluate import evaluate as run_evaluate

    post = _postprocess(run, min_size, fill_holes, keep_largest)
    report = run_evaluate(
        run,
        images,
        masks,
        mask_mode=mask_mode,
        device=device,
        precision=precision,
        postprocess=post,
        check_agreement=check_agreement,
        label_map=label_map,
        classes=classes,
        tta=tta,
    )
    _say(report.table())
    if json_out is not None:
        report.save_json(json_out)
        _say(f"wrote {json_out}")
    if confusion is not None:
        csv_path = report.save_confusion(confusion)
        _say(f"wrote {confusion} and {csv_path}")
    if per_image is not None:
        report.save_per_image(per_image)
        worst = report.worst_first()[:3]
        _say(f"wrote {per_image}; worst: " + ", ".join(f"{s.name} (mIoU {s.mean_iou:.3f})" for s in worst))


@app.command()
@guarded
def predict(
    run: Annotated[Path, typer.Argument(help="run folder (or .onnx file)")],
    inputs: Annotated[list[str], typer.Argument(help="image or video files, folders or glob patterns")],
    out: Annotated[Path, typer.Option(help="output folder (never one of the input folders)")],
    masks: Annotated[Path | None, typer.Option(help="truth masks: also write input | truth | prediction")] = None,
    mode: Annotated[
        str | None, typer.Option(help=_one_of(PredictMode, {"sliding": "window at full resolution"}))
    ] = None,
    classes: ShownClasses = None,
    device: str = "auto",
    tta: Tta = None,
    save_probs: Annotated[
        str | None,
        typer.Option(help="also write confidence and entropy PNGs; npz: with float16 probabilities, png: PNGs only"),
    ] = None,
    precision: PredictPrecision = None,
    outputs: Annotated[
        str, typer.Option(help="which files per image: any of mask,colour,overlay")
    ] = "mask,colour,overlay",
    strict: Annotated[bool, typer.Option(help="stop at the first unreadable input (default: skip and report)")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace files in --out that no unetkit manifest lists")] = False,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 8,
    frames: Annotated[bool, typer.Option(help="videos: also one index-mask PNG per frame")] = False,
    check_agreement: CheckAgreement = 0,
    min_size: MinSize = None,
    fill_holes: FillHoles = None,
    keep_largest: KeepLargest = None,
    progress: bool = True,
) -> None:
    """Write for each image: index mask PNG (original size), colour mask, overlay; and manifest.csv."""
    from .predict_files import predict_files

    report = predict_files(
        _with_classes(run, classes, device, precision),
        inputs,
        out,
        masks=masks,
        mode=mode,
        device=device,
        precision=precision,
        outputs=outputs,
        strict=strict,
        overwrite=overwrite,
        batch_size=batch_size,
        frames=frames,
        check_agreement=check_agreement,
        postprocess=_postprocess(run, min_size, fill_holes, keep_largest),
        progress=progress and sys.stderr.isatty(),
        log=_say,
        tta=tta,
        save_probs=save_probs,
    )
    _say(report.summary())


def _with_classes(run: Path, classes: Path | None, device: str, precision: str | None) -> Any:
    """The run itself, or (with --classes FILE) its predictor showing that file's names and colours."""
    if classes is None:
        return run
    from .data.classes import use_classes
    from .predict import open_predictor

    predictor = open_predictor(run, device=device, precision=precision)
    predictor.config = use_classes(predictor.config, classes)
    return predictor


@app.command("import-keras")
@guarded
def import_keras(
    model_file: Annotated[Path, typer.Argument(help="Keras .h5, .keras or .weights.h5 of the seed's U-Net")],
    out: Annotated[Path, typer.Option(help="run folder to write")],
    class_names: Annotated[Path | None, typer.Option(help="JSON list of class names, or a palette file")] = None,
    input_size: Annotated[tuple[int, int] | None, typer.Option(help="H W (a bare .weights.h5 holds none)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the run already in --out (its files are deleted)")] = False,
) -> None:
    """Bring a U-Net trained with the Keras tutorial over as a run folder (h5py only, no TensorFlow)."""
    from .keras_io import import_run

    run = import_run(model_file, out, class_names=class_names, input_size=input_size, overwrite=overwrite)
    console().print(f"imported {model_file} -> {run}")
    console().print(
        f"next: unetkit predict {run} IMAGES... --out DIR | unetkit evaluate {run} --images DIR --masks DIR"
    )


@app.command()
@guarded
def export(
    run: Annotated[Path, typer.Argument(help="run folder")],
    out: Annotated[
        Path | None, typer.Option(help="file to write (.onnx for --format onnx; --int8: RUN/model.int8.onnx)")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="onnx or keras-weights")] = "onnx",
    dynamic: Annotated[bool, typer.Option(help="ONNX: free batch, height, width (x16)")] = False,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 17)")] = None,
    weights: Annotated[str, typer.Option(help="best or last")] = "best",
    int8: Annotated[bool, typer.Option(help="ONNX: static int8 (QDQ) calibrated on the run's training images")] = False,
    calibrate: Annotated[Path | None, typer.Option(help="--int8: calibrate on this folder instead")] = None,
    calibrate_count: Annotated[int, typer.Option(help="--int8: calibration images")] = 64,
    max_change: Annotated[
        float, typer.Option(help="--int8: refuse when more than this share of calibration pixels change class")
    ] = 0.01,
) -> None:
    """Export a run's network; ONNX carries its settings and is checked against PyTorch before writing."""
    if format == "onnx":
        from .export import export_onnx

        report = export_onnx(
            run,
            out,
            dynamic=dynamic,
            opset=opset,
            weights=weights,
            int8=int8,
            calibrate=calibrate,
            calibrate_count=calibrate_count,
            max_change=max_change,
            log=_say,
        )
        _say(report.summary())
        return
    if out is None:
        raise UnetkitError("give --out FILE (where to write the weights)")
    if int8:
        raise UnetkitError("--int8 applies to --format onnx only")
    if format != "keras-weights":
        raise UnetkitError(f"--format must be onnx or keras-weights, got {format!r}")
    if dynamic or opset is not None:
        raise UnetkitError("--dynamic and --opset apply to --format onnx only")
    try:
        from .keras_io import export_keras_weights
    except ImportError:
        raise UnetkitError("--format keras-weights is not available in this version of unetkit") from None
    from .run import load_run

    export_keras_weights(load_run(run, weights=weights).model, out)
    console().print(f"wrote {out}")


@app.command()
@guarded
def serve(
    model: Annotated[Path, typer.Argument(help="run folder or .onnx file")],
    host: Annotated[str, typer.Option(help="address; 0.0.0.0 opens it to the network")] = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="largest upload accepted (413 above)")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="largest image, in pixels")] = 25_000_000,
    batch_window_ms: Annotated[float, typer.Option(help="how long a request waits to share a batch")] = 5.0,
    max_batch: Annotated[int, typer.Option(help="images per forward pass at most")] = 8,
    device: str = "auto",
    log_level: Annotated[str, typer.Option(help="info logs each request; warning is quiet")] = "info",
    classes: ShownClasses = None,
    tta: Tta = None,
    precision: PredictPrecision = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="require 'Authorization: Bearer KEY' (KEY: this file's first line)")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="allow pages from this origin to call the API (repeatable)")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS: private key (PEM), with --ssl-certfile")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS: certificate chain (PEM)")] = None,
    min_size: MinSize = None,
    fill_holes: FillHoles = None,
    keep_largest: KeepLargest = None,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /info, /health, /docs, and a web page at /.

    Access control: --api-key-file FILE or the UNETKIT_API_KEY environment variable.
    """
    try:
        from .serve import serve as run_server
        from .serve.app import check_server_options
        from .serve.auth import key_file_warning, read_api_key
    except ImportError as e:
        raise UnetkitError(
            f"serving needs the serve extra ({e.name or e} is missing): pip install 'unetkit[serve]'"
        ) from None
    check_server_options(port, log_level)
    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise UnetkitError("TLS needs both --ssl-keyfile and --ssl-certfile (or neither, behind a reverse proxy)")
    api_key = read_api_key(api_key_file)
    post = _postprocess(model, min_size, fill_holes, keep_largest)
    warning = key_file_warning(api_key_file)
    if warning:
        _say(f"note: {warning}")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        _say(f"note: on {host}, anyone who can reach this machine can use the model (see --api-key-file)")
    scheme = "https" if ssl_certfile else "http"
    guard = ", API key required" if api_key else ""
    _say(f"serving {model} at {scheme}://{host}:{port}/ (API reference: /docs{guard}); Ctrl-C stops")
    tls = {"ssl_keyfile": str(ssl_keyfile), "ssl_certfile": str(ssl_certfile)} if ssl_certfile else {}
    served: Any = model
    if classes is not None:
        from .data.classes import use_classes
        from .predict import open_predictor

        served = open_predictor(model, device=device, precision=precision, postprocess=post)
        served.config = use_classes(served.config, classes)
    run_server(
        served,
        host,
        port,
        max_upload_bytes=int(max_upload_mb * 1e6),
        max_pixels=max_pixels,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        device=device,
        log_level=log_level,
        tta=tta,
        precision=precision,
        postprocess=post,
        api_key=api_key,
        cors_origins=tuple(cors_origin or ()),
        uvicorn_options=tls,
    )


@app.command()
@guarded
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="run folders to combine (same classes and input channels)")],
    out: Annotated[Path, typer.Option(help="ensemble folder to write (new or empty)")],
    weights: Annotated[str, typer.Option(help="each member's best or last weights")] = "best",
) -> None:
    """Combine runs into one model that averages their probabilities; evaluate/predict/export/serve take it."""
    from .ensemble import make_ensemble

    path = make_ensemble(list(runs), out, weights=weights)
    console().print(f"wrote the ensemble of {len(runs)} runs to {path}")
    console().print(f"next: unetkit evaluate {path} --images DIR --masks DIR | unetkit export {path} --out ens.onnx")


@app.command("runs")
@guarded
def runs_table(
    folder: Annotated[Path, typer.Argument(help="folder holding run folders (searched a few levels down)")] = Path("."),
    sort: Annotated[str, typer.Option(help="name, model, classes, epochs, miou, time or date")] = "date",
    reverse: Annotated[bool | None, typer.Option("--reverse/--no-reverse", help="flip the order")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of the table")] = False,
) -> None:
    """A table of the runs under a folder: name, model, classes, epochs, best val mIoU, time, date."""
    from .runs import format_table, list_runs, runs_json

    rows = list_runs(folder, sort=sort, reverse=reverse)
    if json_out:
        typer.echo(runs_json(rows))
    elif not rows:
        console().print(f"no run folders under {folder}")
    else:
        console().print(format_table(rows), soft_wrap=True)


@app.command()
@guarded
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("demo-run"),
    recipe: Annotated[
        str, typer.Option(help="strong (the seed's network + batch norm, ~5 min) or seed (the tutorial's recipe)")
    ] = "strong",
    train_count: Annotated[int | None, typer.Option(help="training scenes [default: the recipe's]")] = None,
    val_count: Annotated[int | None, typer.Option(help="validation and test scenes [default: 128]")] = None,
    epochs: Annotated[int | None, typer.Option(help="train this many epochs, no time budget")] = None,
    time_budget: Annotated[
        str | None, typer.Option(help="training time (e.g. 4m, 600) [default: strong 240 s, seed none]")
    ] = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: Annotated[bool, typer.Option(help="replace the run already in --out")] = False,
) -> None:
    """Train the seed's U-Net on built-in driving scenes, evaluate on held-out scenes, show pictures."""
    from .demo import run_demo
    from .timebudget import parse_duration

    budget: dict[str, Any] = {} if time_budget is None else {"time_budget": parse_duration(time_budget)}
    run_demo(
        out,
        recipe=recipe,
        overwrite=overwrite,
        train_count=train_count,
        val_count=val_count,
        epochs=epochs,
        seed=seed,
        progress=progress,
        log=console().print,
        **budget,
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as e:
        sys.exit(e.code)


if __name__ == "__main__":
    main()


# train --help: options in panels, with the defaults that matter (None in the signature means "the recipe's")
_TRAIN_PANELS = {
    "Config": "config_file overrides print_config",
    "Data": "images masks val_images val_masks val_fraction n_classes ignore_index mask_mode palette class_names "
    "classes label_map recursive skip_bad cache num_workers",
    "Model": "model input_size channels n_filters depth dropout batch_norm normalize resize",
    "Optimisation": "recipe epochs batch_size lr optimizer weight_decay schedule warmup_epochs loss class_weights "
    "augment progressive early_stopping seed nan_policy",
    "Runtime": "out resume overwrite precision compile device nproc progress",
}
_TRAIN_DEFAULTS = {
    "recipe": "seed",
    "n_filters": "32",
    "input_size": "96 128",
    "model": "unet",
    "depth": "5",
    "dropout": "0.3",
    "batch_norm": "off; strong: on",
    "epochs": "40",
    "batch_size": "32; strong: 8",
    "lr": "0.001; strong: 0.005",
    "optimizer": "adam; strong: adamw",
    "weight_decay": "0; strong: 0.01",
    "schedule": "constant; strong: cosine",
    "warmup_epochs": "0; strong: 1",
    "loss": "ce; strong: ce+dice",
    "class_weights": "none",
    "augment": "off; strong: flip, scale, colour jitter",
    "early_stopping": "0",
    "val_fraction": "0",
    "mask_mode": "auto",
    "resize": "bilinear",
    "precision": "auto",
    "device": "auto",
    "seed": "0",
    "nan_policy": "stop",
    "cache": "auto",
    "num_workers": "2",
}


def _arrange_help(fn: Callable[..., Any], panels: dict[str, str], defaults: dict[str, str]) -> None:
    """Put ``fn``'s options into help panels and show ``defaults`` for those whose signature default is None.

    It rewrites the signature typer reads, so the command's code keeps its plain parameters.
    """
    import copy

    from typer.models import OptionInfo

    panel_of = {name: panel for panel, names in panels.items() for name in names.split()}
    params = []
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if p.name not in panel_of and p.name not in defaults:
            params.append(p)
            continue
        base, meta = p.annotation, tuple[Any, ...]()
        if typing.get_origin(base) is Annotated:
            base, *rest = typing.get_args(base)
            meta = tuple(rest)
        found = next((m for m in meta if isinstance(m, OptionInfo)), None)
        info = copy.copy(found) if found is not None else typer.Option()  # the declaration is shared: not changed
        info.rich_help_panel = panel_of.get(p.name)
        if p.name in defaults:
            info.show_default = defaults[p.name]
        if p.name == "input_size":
            info.metavar = "H W"
        params.append(p.replace(annotation=Annotated[base, info]))
    order = list(panels)
    params.sort(key=lambda p: order.index(panel_of[p.name]) if p.name in panel_of else -1)  # panels in order
    fn.__signature__ = inspect.signature(fn).replace(parameters=params)  # type: ignore[attr-defined]


_arrange_help(train, _TRAIN_PANELS, _TRAIN_DEFAULTS)
_arrange_help(compare, {}, _TRAIN_DEFAULTS)
