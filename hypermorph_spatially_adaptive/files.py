"""Files the project writes: atomic writes of text, JSON, CSV and torch files, and the software versions.

Every output goes through :func:`atomic_write`: the content is written to a temporary file beside the target and
renamed onto it, so a reader (or a process killed mid-write) never sees a partial file; a write that fails (a full
disk) leaves no temporary behind and raises an OSError naming the target. The ground floor of the
package: it imports no other module of it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = [
    "atomic_write",
    "atomic_torch_save",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "software_versions",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A reader (or a process killed mid-write) never sees a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; outputs get the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError):  # a full disk: name the file meant, not its temporary
            raise OSError(error.errno, f"cannot write this file ({error.strerror or error})", str(path)) from error
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`, serialised in memory first: written to a file, a full disk
    surfaces as an OSError (torch's own file writer reports it as an unrelated RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON through :func:`atomic_write`."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV (``header`` then ``rows``) through :func:`atomic_write`; floats keep full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def software_versions() -> dict[str, str]:
    """Versions of Python and the main libraries, for config files."""
    import importlib.metadata as metadata

    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__}
    for package in ("numpy", "scipy", "nibabel", "elastic-hypermorph"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["cuda"] = torch.version.cuda or "none"
    return versions
