"""Atomic file writes, the clean-up of temporaries a killed writer left behind, and reading JSON files.

A leaf module: it imports nothing from unetkit, so that every module that writes files (the run
folder, plots, reports, exports) can use it without pulling in anything else.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"  # atomic writes go to ".NAME.PID.RANDOM.tmp" first


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a file should get the mode open() gives it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _umask() -> int:
    """The process umask: from /proc on Linux (no race with other threads), else set and put back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path, error: Callable[[str], Exception], what: str = "", fix: str = "") -> Any:
    """The parsed JSON file ``path``; when it is missing, unreadable or not JSON, ``error(message)`` is raised.

    The message names the file (``what`` it is, e.g. "class weight file", then its path) and the problem,
    then ``fix`` (what to do about a damaged file). The caller's error type keeps this module a leaf.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    fix = f"; {fix}" if fix else ""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{name} does not exist") from None
    except OSError as e:  # a folder where the file should be, permissions, ...
        raise error(f"{name} cannot be read ({e.strerror or e}){fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{name} is not valid JSON ({e}){fix}") from None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder`` (its process is gone); return them.

    Temporary names are ``.NAME.PID.RANDOM.tmp``: a file whose PID still runs is left alone, so a
    live writer in another process never loses its file.
    """
    removed = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        parts = p.name.split(".")
        if len(parts) < 5 or not parts[-3].isdigit():
            continue  # not one of ours
        pid = int(parts[-3])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
