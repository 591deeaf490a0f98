"""What an image file may declare before its voxel data is read: a header cannot make a reader allocate memory that
the file cannot fill, nor read a device or a file outside the header's folder.

:func:`check_declared` runs on every image header before its voxels are read (:mod:`.volume_io`,
:mod:`.image_io`). It refuses, with a ValueError naming the file:

- more voxels than :func:`max_voxels` (default :data:`DEFAULT_MAX_VOXELS`, ``--max-voxels`` of every stage), or
  more than :data:`MAX_COMPONENTS` values per voxel;
- complex-valued voxels (registration takes real intensities);
- more bytes than the file can hold: an uncompressed file must be as long as its header says, a gzip or zlib
  stream can expand at most :data:`DEFLATE_MAX_RATIO` times (deflate's own bound), so a short file declaring a huge
  image is truncated or forged and is refused before anything is allocated;
- a voxel -> world affine that is not finite or has a zero column along an axis of more than one voxel (spacing
  0: every distance, resampling and regularizer would divide by it);
- a gzip file that ends before its stream does (:func:`gzip_size` decompresses it in small blocks, keeping
  nothing: some readers would otherwise fill the missing part with zeros).

:func:`detached_data_file` checks the data file a MetaImage ``.mhd`` or NRRD ``.nhdr`` header names: a regular
file (not a device or FIFO) inside the header's folder, reached without leaving it through a link.
"""
from __future__ import annotations

import contextlib
import os
import stat
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["DEFAULT_MAX_VOXELS", "MAX_COMPONENTS", "DEFLATE_MAX_RATIO", "max_voxels", "voxel_limit", "check_declared",
           "check_affine", "gzip_size", "detached_data_file"]

#: Default limit on the voxels of one image: a 512 x 512 x 1024 CT, about 268 million.
DEFAULT_MAX_VOXELS = 512 * 512 * 1024
#: The most values one voxel may hold (a displacement field has 2 or 3).
MAX_COMPONENTS = 64
#: The most a deflate stream (gzip, zlib) expands: 258 bytes per 2 bits of a run of matches, at most 1032:1.
DEFLATE_MAX_RATIO = 1032
_limit = DEFAULT_MAX_VOXELS


def max_voxels() -> int:
    """The voxel limit in force (see :func:`voxel_limit`)."""
    return _limit


@contextlib.contextmanager
def voxel_limit(limit: int | None) -> Iterator[None]:
    """Read images under the limit of ``limit`` voxels per image (None: keep the one in force) while the context is
    open; a stage sets it from ``--max-voxels`` for its whole run, data-loading workers included."""
    global _limit
    if limit is None:
        yield
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"--max-voxels must be a positive whole number, got {limit!r}")
    previous, _limit = _limit, limit
    try:
        yield
    finally:
        _limit = previous


def _product(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def check_declared(path: Path, what: str, shape: tuple[int, ...], components: int, itemsize: int, complex_: bool,
                   available: int | None, compression: str | None) -> None:
    """Refuse a header before its voxel data is read (see the module docstring).

    ``shape`` (the spatial axes) and ``components`` (values per voxel) as declared; ``itemsize`` bytes per value;
    ``available`` the bytes of voxel data the file holds (None: unknown, e.g. a DICOM series); ``compression`` None (raw), ``"deflate"`` (gzip, zlib) or
    another name (no bound on its ratio: only the voxel limit applies).
    """
    if any(int(size) < 0 for size in shape):
        raise ValueError(f"{what} {path}: the header declares a negative size {tuple(shape)}")
    voxels = _product(shape)
    if voxels > _limit:
        raise ValueError(f"{what} {path}: the header declares {' x '.join(map(str, shape))} = {voxels:,} voxels, "
                         f"more than the limit of {_limit:,} (raise it with --max-voxels N if the image is real)")
    if not 1 <= components <= MAX_COMPONENTS:
        raise ValueError(f"{what} {path}: the header declares {components} values per voxel (expected 1 to "
                         f"{MAX_COMPONENTS})")
    if complex_:
        raise ValueError(f"{what} {path}: complex-valued voxels; registration needs real intensities (save the "
                         f"magnitude or the real part as its own image)")
    if available is None:
        return
    needed = voxels * components * int(itemsize)
    if compression is None and needed > available:
        raise ValueError(f"{what} {path}: the header declares {needed:,} bytes of voxel data, the file holds "
                         f"{available:,}; it is truncated or its header is wrong")
    if compression == "deflate" and needed > DEFLATE_MAX_RATIO * available + 1024:
        raise ValueError(f"{what} {path}: the header declares {needed:,} bytes of voxel data, more than its "
                         f"{available:,} compressed bytes can hold (deflate expands at most "
                         f"{DEFLATE_MAX_RATIO}:1); it is truncated or its header is wrong")


def check_affine(affine: Any, shape: tuple[int, ...], path: Path, what: str) -> None:
    """ValueError naming the file when the ``[4, 4]`` voxel -> world ``affine`` of an image of ``shape`` is not
    finite or gives an axis of more than one voxel a zero voxel size."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(linear)):
        raise ValueError(f"{what} {path}: the header's voxel -> world affine is not finite")
    sizes = np.sqrt((linear ** 2).sum(axis=0))
    flat = [axis for axis in range(min(3, len(shape))) if shape[axis] > 1 and not sizes[axis] > 0]
    if flat:
        raise ValueError(f"{what} {path}: the header's voxel -> world affine (sform/qform) has a zero column for "
                         f"axis {flat[0]} (voxel size 0); fix the header's sform or qform")


def gzip_size(path: Path, what: str) -> int:
    """The decompressed size of the gzip file ``path`` (every member), decompressed in 1 MiB blocks that are kept
    nowhere; ValueError naming the file when it is truncated or damaged."""
    total, decompressor, data = 0, zlib.decompressobj(wbits=31), b""
    with open(path, "rb") as handle:
        while True:
            data = data or handle.read(1 << 20)
            if not data:
                break
            if decompressor.eof:  # the next member
                decompressor = zlib.decompressobj(wbits=31)
            try:
                total += len(decompressor.decompress(data, 1 << 20))
            except zlib.error as error:
                raise ValueError(f"{what} {path}: cannot read the voxel data ({error}); the file is damaged") \
                    from None
            data = decompressor.unconsumed_tail or decompressor.unused_data
            if decompressor.eof and not data.strip(b"\0"):
                data = b""  # zero padding after a member
    if not decompressor.eof:
        raise ValueError(f"{what} {path}: the compressed data ends early; the file is truncated")
    return total


def detached_data_file(header: Path, name: str, what: str) -> Path:
    """The data file ``name`` of a detached header ``header`` (``.mhd``, ``.nhdr``): relative to the header's
    folder, inside it (also after following links) and a regular file; else a ValueError naming both."""
    folder = header.resolve().parent
    if os.path.isabs(name) or "%" in name:
        raise ValueError(f"{what} {header}: data file {name!r} must be one file given relative to the header's "
                         f"folder {folder}")
    target = (folder / name).resolve()
    if not target.is_relative_to(folder):
        raise ValueError(f"{what} {header}: data file {name!r} leads out of the header's folder {folder} (to "
                         f"{target}); keep the data file beside its header")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} {header}: data file {name!r} not found in {folder}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {header}: data file {target} is not a regular file (a device, FIFO or folder)")
    return target
