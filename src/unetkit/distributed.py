"""Data-parallel training on torch.distributed: process group, rank helpers, all-reduce helpers.

``unetkit train`` runs unchanged under ``torchrun --nproc_per_node=N -m unetkit train ...``: torchrun
sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) for every process; ``fit()`` sees them,
joins the process group (NCCL on CUDA, gloo on the CPU), takes the GPU numbered LOCAL_RANK, wraps
the model in DistributedDataParallel and shards every epoch's shared permutation over the ranks.
Without those variables every helper here is a no-op, so one code path serves one and many processes.

Data: every rank reads the folders itself (no broadcast). That keeps ranks independent and the code
simple; it costs one host copy of the uint8 cache per process, which is why the "auto" cache budget
is divided by LOCAL_WORLD_SIZE (see ``data.stream.choose_cache``).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, UnetkitError

F = TypeVar("F", bound=Callable[..., Any])

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes, and on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True when several processes train together (and collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting RANK/WORLD_SIZE)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def env_info() -> DistInfo:
    """The ranks the launcher's environment variables describe (all defaults without a launcher)."""
    if not launched():
        return DistInfo()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them); got "
            + ", ".join(f"{k}={os.environ.get(k)!r}" for k in _ENV)
        ) from None
    if not (0 <= rank < world):
        raise ConfigError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return DistInfo(rank, world, local, local_world)


def info() -> DistInfo:
    """This process's ranks: from the live process group when there is one, else from the environment."""
    if dist.is_available() and dist.is_initialized():
        env = env_info()
        return DistInfo(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size)
    return DistInfo()


def is_main() -> bool:
    """True on rank 0 (or without a launcher); usable before the process group exists."""
    return env_info().is_main if not (dist.is_available() and dist.is_initialized()) else dist.get_rank() == 0


@contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU) and leave it at the end.

    Without a launcher, with one process, or when the caller already initialised torch.distributed
    (then the caller owns the group), nothing is created or destroyed. The group is destroyed on
    errors too: the failing rank exits promptly (its peers' pending collectives then fail, and
    torchrun stops the remaining workers when one fails).
    """
    env = env_info()
    if env.world_size <= 1 or not dist.is_available() or dist.is_initialized():
        yield info()
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    device_id = None
    if use_cuda:
        device_id = torch.device("cuda", _cuda_index(env))
        torch.cuda.set_device(device_id)
    try:  # device_id binds NCCL to this rank's GPU (and creates its communicator now, not lazily)
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device_id)
    except Exception as e:  # bad MASTER_ADDR/PORT, a peer that never came, ...
        raise UnetkitError(
            f"could not join the process group as rank {env.rank} of {env.world_size} "
            f"({type(e).__name__}: {e}); check MASTER_ADDR/MASTER_PORT and that every "
            "node runs the same torchrun command"
        ) from None
    try:
        yield info()
    finally:
        dist.destroy_process_group()


def with_process_group(fn: F) -> F:
    """Decorator for ``fit(config, ...)``: run it inside ``process_group(config.train.device)``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        config = args[0] if args else kwargs["config"]
        with process_group(config.train.device):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _cuda_index(env: DistInfo) -> int:
    """This rank's GPU: LOCAL_RANK (modulo the visible GPUs, as with SLURM --gpus-per-task=1), or the
    current device when the caller set up the group without a launcher's environment."""
    if "LOCAL_RANK" not in os.environ and dist.is_available() and dist.is_initialized():
        return torch.cuda.current_device()
    return env.local_rank % max(torch.cuda.device_count(), 1)


def local_device(device: torch.device) -> torch.device:
    """Under several ranks a CUDA device becomes this rank's GPU (LOCAL_RANK); the CPU stays the CPU."""
    env = info()
    if env.enabled and device.type == "cuda":
        return torch.device("cuda", _cuda_index(env))
    return device


def local_batch_size(global_batch: int, world_size: int | None = None) -> int:
    """The per-rank batch for the global ``global_batch``; a ConfigError when it does not divide evenly."""
    world = info().world_size if world_size is None else world_size
    if global_batch % world:
        lower = max(world, global_batch - global_batch % world)
        raise ConfigError(
            f"batch size {global_batch} does not divide evenly over {world} processes (the batch "
            f"size is global: each process takes batch/{world}); use a multiple of {world}, "
            f"e.g. {lower} or {lower + world}"
        )
    return global_batch // world


def wrap_model(step_model: nn.Module, model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train with: ``step_model`` with one process; DistributedDataParallel(model) with several.

    ``step_model`` is ``model`` itself or ``torch.compile(model)``. In the compiled case DDP is compiled
    after wrapping (``torch.compile(DDP(model))``), as PyTorch recommends: TorchDynamo's DDPOptimizer
    then splits the graph at DDP's gradient buckets so that the all-reduce overlaps the backward.
    """
    if not info().enabled:
        return step_model
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if step_model is model:
        return ddp
    return torch.compile(ddp)  # type: ignore[return-value]  # stub: Callable; a compiled Module is one


def shard(data: Any) -> Any:
    """This rank's share of an evaluation set: samples rank, rank + world, ... (no padding, no repeats).

    Unlike training batches, nothing is padded, so confusion matrices summed over ranks count each
    sample exactly once. ``data`` needs ``__len__`` and ``subset``; None passes through.
    """
    env = info()
    if data is None or not env.enabled:
        return data
    return data.subset(torch.arange(env.rank, len(data), env.world_size))


def seed_rank(seed: int, epoch: int) -> None:
    """Under several ranks, seed the global RNG (dropout) per (seed, epoch, rank).

    Every rank starts from the same seed so that the initial weights agree; without this, all ranks
    would then draw identical dropout masks. Per-epoch seeding also makes a resumed multi-process run
    repeat the RNG stream it had. With one process it does nothing (the RNG continues, as before).
    """
    env = info()
    if env.enabled:
        torch.manual_seed((seed * 1_000_003 + epoch) * 65_537 + env.rank + 1)


def all_finite(value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every rank, so that all ranks skip (or take) a step together."""
    ok = torch.isfinite(value.detach()).all().to(torch.int32)
    if info().enabled:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def rank0_choice(value: bool, device: torch.device) -> bool:
    """Rank 0's ``value`` on every rank: for choices a rank makes by measuring (``--precision auto`` on the
    CPU), which could differ between ranks on a busy machine."""
    if not info().enabled:
        return value
    t = torch.tensor([int(value)], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def reduce_train_sums(loss_sum: torch.Tensor, cm: Any, seen: int) -> int:
    """Sum an epoch's loss sum (in place), confusion matrix (in place) and sample count over ranks."""
    if not info().enabled:
        return seen
    count = torch.tensor([float(seen)], device=loss_sum.device)
    dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    cm.all_reduce()
    return int(count.item())


def weighted_mean(mean: float | None, count: int, device: torch.device | str = "cpu") -> float | None:
    """The mean over all ranks of per-rank means of ``count`` samples (None where no rank counted any)."""
    if not info().enabled:
        return mean
    t = torch.tensor([(mean or 0.0) * count, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    total, n = t.tolist()
    return total / n if n else None


def barrier() -> None:
    """Wait for every rank (a no-op with one process)."""
    if info().enabled:
        dist.barrier()


def free_port() -> int:
    """A TCP port free on this machine now (for MASTER_PORT in tests and single-machine launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (e.g. ``--nproc 4``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command running ``unetkit <argv>`` (minus ``--nproc``) in ``nproc`` processes here.

    ``--standalone`` makes torchrun pick a free rendezvous port on this machine, so two runs on one
    machine do not collide.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "unetkit",
        *strip_option(argv, "--nproc"),
    ]


def launch(argv: Sequence[str], nproc: int, *, log: Callable[[str], None] = print) -> int:
    """Run ``unetkit <argv>`` under torchrun with ``nproc`` processes on this machine; its exit code."""
    if launched():
        raise ConfigError("--nproc starts torchrun itself; under torchrun (RANK/WORLD_SIZE set) leave it out")
    cmd = torchrun_command(argv, nproc)
    log("launching: " + " ".join(cmd))
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:  # torchrun forwards the signal to its workers and stops them
        return 130
