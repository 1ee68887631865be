"""User-facing errors: one clear paragraph naming the file and the fix, never a bare traceback."""

from __future__ import annotations


class UnetkitError(Exception):
    """An error the user caused and can fix; the CLI prints its message and exits non-zero."""

    exit_code: int = 2  # the CLI's exit status for this error


class DataError(UnetkitError, ValueError):
    """A problem with images, masks or folders (unpaired, unreadable, wrong values, ...)."""


class ConfigError(UnetkitError, ValueError):
    """An invalid setting, from the command line, the Python API or an edited config.json."""


class RunError(UnetkitError):
    """A run folder that is missing, incomplete or inconsistent."""


class ExportError(UnetkitError):
    """An export could not be made, or an ONNX file is not one unetkit can use."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type name when empty."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if limit is None else line[:limit]


def needs_extra(what: str, package: str, extra: str, error: type[UnetkitError] = UnetkitError) -> UnetkitError:
    """The error for a missing optional dependency: what needs which package, and the extra to install."""
    return error(f"{what} needs {package}: pip install 'unetkit[{extra}]'")
