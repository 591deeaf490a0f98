"""Image files of any ITK format through SimpleITK, in the project's array and world conventions.

Formats (:data:`FORMATS`, chosen by the file name): NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``),
NRRD (``.nrrd``, ``.nhdr``), a single DICOM file (``.dcm``) and a DICOM series (a folder holding one series).

Conventions, the same as for the NIfTI files read with nibabel (:mod:`.volume_io`):

- Arrays are in nibabel's i, j, k order. SimpleITK's ``GetArrayFromImage`` returns the reverse, ``[z, y, x]``,
  while its index order ``(x, y, z)`` is ``(i, j, k)``: arrays are transposed on the way in and out.
- The affine maps voxel ``(i, j, k)`` to world millimetres in RAS+ as nibabel's does (+x towards the patient's
  right, +y anterior, +z superior), ``[4, 4]`` float64. ITK's physical space is LPS+: with ITK's origin
  ``o``, spacing ``s`` and direction ``D``, ``affine = diag(-1, -1, 1, 1) @ [[D diag(s), o], [0, 1]]``
  (:func:`affine_from_itk`; :func:`itk_geometry` is the inverse). A point's RAS and LPS coordinates differ by
  the sign of x and y (:data:`LPS_TO_RAS`).
- A 2D image is returned as ``[H, W, 1]`` with a 4x4 affine whose third column is the unit vector along world z,
  as a 2D NIfTI; a 3D image of one slice is ``[H, W, 1]`` too, with its own third column. ITK cannot hold a 2D
  image whose plane leaves the x-y plane (a coronal slice, say): such 2D NIfTI files are read with nibabel, and
  such 2D outputs are written as one slice of a 3D image.
- One NIfTI file has one affine in the project: where ITK (which prefers the qform) and nibabel (which prefers the
  sform, as the Learn2Reg datasets read it) disagree, reading fails and says how to make the header consistent.

Every reader checks the header before any voxel data is read (:mod:`.file_limits`): a voxel limit, real values,
no more bytes declared than the file can hold, and the data file of a detached header (``.mhd``, ``.nhdr``) a
regular file beside it.

Displacement fields in ITK formats (:func:`write_displacement`, :func:`read_displacement`) follow ITK's
convention: a vector image on the fixed grid whose vectors are physical LPS millimetres, so that
``sitk.DisplacementFieldTransform`` of the file maps a fixed point ``p`` to ``p + u(p)`` in the moving image, as
the project's voxel fields do (the Learn2Reg NIfTI fields of :mod:`.nifti_io` stay in voxels).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..files import atomic_write
from .file_limits import check_affine, check_declared, detached_data_file
from .volume_io import check_nifti_header

__all__ = [
    "FORMATS",
    "ITK_WRITE_FORMATS",
    "LPS_TO_RAS",
    "ImageHeader",
    "image_format",
    "format_suffix",
    "strip_suffix",
    "affine_from_itk",
    "itk_geometry",
    "dicom_series_files",
    "read_header",
    "read_image",
    "read_labels",
    "write_image",
    "write_displacement",
    "read_displacement",
]

#: Format name -> file name endings (a DICOM series is a folder).
FORMATS: dict[str, tuple[str, ...]] = {
    "nifti": (".nii.gz", ".nii"),
    "mha": (".mha", ".mhd"),
    "nrrd": (".nrrd", ".nhdr"),
    "dicom": (".dcm",),
}
#: Formats an output can be written in (a DICOM input's outputs are written as MetaImage).
ITK_WRITE_FORMATS = ("nifti", "mha", "nrrd")
#: ``diag(-1, -1, 1)``: LPS coordinates <-> RAS coordinates (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class ImageHeader(NamedTuple):
    """What a file says about its grid, without the voxel data: ``shape`` (2 or 3 ints, the file's own), the
    voxel -> RAS affine ``[4, 4]``, the number of components per voxel and the format name."""

    shape: tuple[int, ...]
    affine: np.ndarray
    components: int
    format: str


def _sitk():
    try:
        import SimpleITK
    except ImportError as error:  # a declared dependency; say how to get it rather than fail deep inside a stage
        raise ValueError("reading or writing MHA, NRRD or DICOM files needs SimpleITK: pip install 'SimpleITK>=2.2'") \
            from error
    return SimpleITK


def image_format(path: str | Path) -> str:
    """The format name of ``path`` (see :data:`FORMATS`): by its ending, ``dicom`` for a folder."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for fmt, endings in FORMATS.items():
        if name.endswith(endings):
            return fmt
    known = ", ".join(e for endings in FORMATS.values() for e in endings)
    raise ValueError(f"{path}: unknown image format (file names end in {known}; a DICOM series is a folder)")


def format_suffix(fmt: str) -> str:
    """The file ending outputs of format ``fmt`` get: ``.nii.gz``, ``.mha`` or ``.nrrd``."""
    if fmt not in ITK_WRITE_FORMATS:
        raise ValueError(f"cannot write format {fmt!r}; choose one of {ITK_WRITE_FORMATS}")
    return FORMATS[fmt][0]


def strip_suffix(path: str | Path) -> str:
    """The file name without its format ending: ``dir/CASE_0000.nii.gz`` -> ``CASE_0000``, a folder -> its name."""
    name = Path(path).name
    for endings in FORMATS.values():
        for ending in endings:
            if name.lower().endswith(ending):
                return name[: -len(ending)]
    return name


def affine_from_itk(origin, spacing, direction) -> np.ndarray:
    """Voxel -> RAS affine ``[4, 4]`` of an ITK geometry (``origin``, ``spacing`` of 2 or 3 values and the
    row-major ``direction`` of 4 or 9 values, LPS). A 2D geometry gets world z as its third column."""
    ndim = len(spacing)
    linear = np.eye(3)
    linear[:ndim, :ndim] = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim) * np.asarray(spacing, float)
    offset = np.zeros(3)
    offset[:ndim] = np.asarray(origin, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = LPS_TO_RAS @ linear, LPS_TO_RAS @ offset
    return affine


def _plain_2d(affine: np.ndarray) -> bool:
    """Whether a 2D image's affine is the embedding of a 2D geometry (in-plane axes in the x-y plane at z = 0,
    third column world z): then it is written as a 2D image."""
    return bool(np.allclose(affine[2, [0, 1, 3]], 0.0, atol=1e-9) and np.allclose(affine[:3, 2], [0, 0, 1], atol=1e-9))


def itk_geometry(affine: np.ndarray, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin, spacing, direction)`` (LPS, direction row-major) of a voxel -> RAS ``affine`` for an ITK image of
    ``ndim`` axes; inverse of :func:`affine_from_itk`. ``ndim=2`` needs a plain 2D affine (see module docs)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    linear, offset = LPS_TO_RAS @ affine[:3, :3], LPS_TO_RAS @ affine[:3, 3]
    if ndim == 2:
        if not _plain_2d(affine):
            raise ValueError("a 2D image whose affine leaves the x-y plane is written as one slice of a 3D image")
        linear, offset = linear[:2, :2], offset[:2]
    spacing = np.sqrt((linear ** 2).sum(axis=0))
    if not np.all(spacing > 0):
        raise ValueError(f"affine has a zero column (voxel size {spacing.tolist()})")
    direction = linear / spacing
    return tuple(offset.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def dicom_series_files(folder: str | Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, sorted along the slice normal (GDCM's order).

    ValueError when the folder holds no series or several (each series belongs in its own folder).
    """
    sitk = _sitk()
    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ValueError(f"{folder}: no DICOM series in this folder")
    if len(ids) > 1:
        raise ValueError(f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids)}); put each series in a folder "
                         f"of its own")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def _header_of_file(path: str) -> tuple[tuple[int, ...], tuple, tuple, tuple, int]:
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return (tuple(int(n) for n in reader.GetSize()), reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(),
            int(reader.GetNumberOfComponents()))


def _text_header(path: Path, separator: str, last_key: str | None = None) -> dict[str, str]:
    """Lower-cased key -> value of the text header of a MetaImage (``Key = Value``, up to ``last_key``) or NRRD
    (``key: value``, up to the blank line) file, from its first 64 KiB."""
    with open(path, "rb") as handle:
        text = handle.read(1 << 16).decode("latin-1")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if separator == ":" and not line.strip():
            break
        key, found, value = line.partition(separator)
        if found:
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == last_key:
                break
    return fields


def _stored_bytes(path: Path, fmt: str, what: str) -> tuple[int | None, str | None, bool]:
    """(bytes of voxel data the file holds or None when unknown, their compression, whether each value is text)."""
    if fmt == "dicom":
        return None, None, False  # compressed transfer syntaxes have no bound on their ratio: the voxel limit holds
    name, size = path.name.lower(), path.stat().st_size
    if fmt == "nifti":
        return size, "deflate" if name.endswith(".gz") else None, False
    if fmt == "mha":
        fields = _text_header(path, "=", "elementdatafile")
        data = fields.get("elementdatafile")
        if data is None:
            raise ValueError(f"{what} {path}: a MetaImage header without ElementDataFile")
        if data.upper().startswith("LIST"):
            raise ValueError(f"{what} {path}: ElementDataFile LIST (one file per slice) is not supported; write the "
                             f"image as one .mha or .mhd/.raw pair")
        if data.upper() != "LOCAL":
            size = detached_data_file(path, data, what).stat().st_size
        return size, "deflate" if fields.get("compresseddata", "").lower() == "true" else None, False
    fields = _text_header(path, ":")
    data = fields.get("data file", fields.get("datafile"))
    if data is not None:
        size = detached_data_file(path, data, what).stat().st_size
    encoding = fields.get("encoding", "raw").lower()
    compression = {"raw": None, "gzip": "deflate", "gz": "deflate", "ascii": None, "text": None, "txt": None,
                   "hex": None}.get(encoding, encoding)
    return size, compression, encoding in ("ascii", "text", "txt", "hex")


def _check_declared(path: Path, what: str, fmt: str, stream: bool = False) -> None:
    """Refuse the header of ``path`` before any voxel data is read (see :mod:`.file_limits`); ``stream``, before
    reading the voxels, also checks that a gzip-compressed NIfTI is complete (ITK reads a truncated one as zeros)."""
    nifti = _nifti_header(path, fmt, what)
    if nifti is not None:
        check_nifti_header(nifti, path, what, stream)
        return
    sitk = _sitk()
    files = dicom_series_files(path) if path.is_dir() else [str(path)]
    available, compression, text = _stored_bytes(path, fmt, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"{what} {path}: cannot read the header ({str(error).strip().splitlines()[-1]})") from None
    shape = tuple(int(n) for n in reader.GetSize()) + ((len(files),) if len(files) > 1 else ())
    pixel = reader.GetPixelID()
    complex_ = "complex" in sitk.GetPixelIDValueAsString(pixel).lower()
    itemsize = 1 if text else sitk.GetArrayViewFromImage(sitk.Image([1] * reader.GetDimension(), pixel)).itemsize
    check_declared(path, what, shape, int(reader.GetNumberOfComponents()), itemsize, complex_, available,
                   compression)


def _checked(path: Path, what: str, fmt: str | None = None) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return fmt or image_format(path)


def _nifti_header(path: Path, fmt: str, what: str):
    """The nibabel image (header only) of a NIfTI file, else None."""
    if fmt != "nifti":
        return None
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception:  # noqa: BLE001 - not readable by nibabel either: SimpleITK reports it
        return None


def _nibabel_only(nifti) -> bool:
    """Whether a NIfTI is 2D with a plane that leaves x-y: ITK refuses its direction, nibabel reads it."""
    return nifti is not None and len(nifti.shape) == 2 and not _plain_2d(np.asarray(nifti.affine, np.float64))


def _check_nifti_affine(nifti, affine: np.ndarray, path: Path, what: str) -> None:
    """One NIfTI file, one affine: ITK (qform first) and nibabel (sform first, as the Learn2Reg path) must agree."""
    if nifti is None:
        return
    axes = [0, 1, 3] if len(nifti.shape) == 2 else [0, 1, 2, 3]
    reference = np.asarray(nifti.affine, dtype=np.float64)
    if not np.allclose(affine[:3, axes], reference[:3, axes], rtol=1e-5, atol=1e-3):
        raise ValueError(f"{what} {path}: the header's qform and sform disagree (SimpleITK reads\n"
                         f"{np.round(affine, 4)}\nnibabel, as the Learn2Reg datasets, reads\n{np.round(reference, 4)});"
                         f" make them one, e.g. with nibabel: image.set_qform(image.get_sform(), code=1)")


def read_header(path: str | Path, what: str = "image") -> ImageHeader:
    """Shape, affine, components and format from the header only (no voxel data is read).

    For a DICOM series the grid comes from its first and last files: the slice spacing is their distance over the
    number of slices minus one, as SimpleITK's series reader computes it. Raises FileNotFoundError for a missing
    file, ValueError naming ``what`` and the file for anything unreadable.
    """
    path = Path(path)
    fmt = _checked(path, what)
    _check_declared(path, what, fmt)
    nifti = _nifti_header(path, fmt, what)
    if _nibabel_only(nifti):
        return ImageHeader(tuple(int(n) for n in nifti.shape), np.asarray(nifti.affine, dtype=np.float64), 1, fmt)
    try:
        if fmt == "dicom" and path.is_dir():
            files = dicom_series_files(path)
            size, origin, spacing, direction, components = _header_of_file(files[0])
            if len(files) > 1:
                last = np.asarray(_header_of_file(files[-1])[1])
                spacing = (*spacing[:2], float(np.linalg.norm(last - np.asarray(origin))) / (len(files) - 1))
                size = (*size[:2], len(files))
        else:
            size, origin, spacing, direction, components = _header_of_file(str(path))
    except ValueError as error:
        raise ValueError(f"{what} {path}: {error}") from error
    except RuntimeError as error:  # SimpleITK reports unreadable files as RuntimeError
        raise ValueError(f"{what} {path}: cannot read the header ({str(error).strip().splitlines()[-1]})") from error
    if len(size) not in (2, 3):
        raise ValueError(f"{what} {path}: expected a 2D or 3D image, got {len(size)} axes of sizes {size}")
    shape = size[:2] if len(size) == 3 and fmt == "dicom" and size[2] == 1 and not path.is_dir() else size
    affine = affine_from_itk(origin, spacing, direction)
    check_affine(affine, shape, path, what)
    _check_nifti_affine(nifti, affine, path, what)
    return ImageHeader(tuple(shape), affine, components, fmt)


def _read_itk(path: Path, what: str):
    sitk = _sitk()
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(dicom_series_files(path))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except ValueError as error:
        raise ValueError(f"{what} {path}: {error}") from error
    except RuntimeError as error:
        raise ValueError(f"{what} {path}: cannot read the image ({str(error).strip().splitlines()[-1]})") from error


def _to_array(image, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image -> (array with 3 axes in i, j, k order, voxel -> RAS affine)."""
    sitk = _sitk()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} {path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} "
                         f"components")
    ndim = image.GetDimension()
    if ndim not in (2, 3):
        raise ValueError(f"{what} {path}: expected a 2D or 3D image, got {ndim} axes of sizes {image.GetSize()}")
    array = sitk.GetArrayViewFromImage(image)
    array = np.ascontiguousarray(array.transpose(tuple(range(ndim))[::-1]))
    affine = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    return (array[..., None] if ndim == 2 else array), affine


def _read_array(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    fmt = _checked(path, what)
    _check_declared(path, what, fmt, stream=True)
    nifti = _nifti_header(path, fmt, what)
    if _nibabel_only(nifti):
        try:
            array = np.asanyarray(nifti.dataobj)
        except Exception as error:  # noqa: BLE001 - the decompressors raise several types
            raise ValueError(f"{what} {path}: cannot read the voxel data ({type(error).__name__}: {error}); the "
                             f"file is truncated or damaged") from None
        return np.ascontiguousarray(array)[..., None], np.asarray(nifti.affine, np.float64)
    array, affine = _to_array(_read_itk(path, what), path, what)
    _check_nifti_affine(nifti, affine, path, what)
    return array, affine


def read_image(path: str | Path, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Image (float32, 3 axes in i, j, k order, values as stored after the file's rescale) and its voxel -> RAS
    affine (float64 ``[4, 4]``); a 2D image as ``[H, W, 1]``. Errors name ``what`` and the file."""
    array, affine = _read_array(Path(path), what)
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} {path}: holds NaN or infinite values")
    return array, affine


def read_labels(path: str | Path, num_classes: int | None = None, what: str = "label map"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Integer label map (int64, 3 axes) and affine; values must be whole numbers in ``0..num_classes-1``."""
    path = Path(path)
    data, affine = _read_array(path, what)
    if data.dtype.kind == "f" and (not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data))):
        raise ValueError(f"{what} {path}: values must be whole numbers")
    data = data.astype(np.int64)
    if num_classes is not None and data.size and (data.min() < 0 or data.max() >= num_classes):
        raise ValueError(f"{what} {path}: values must lie in 0..{num_classes - 1} ({num_classes} classes), found "
                         f"{sorted(np.unique(data).tolist())[:12]}")
    return data, affine


def _itk_image(array: np.ndarray, affine: np.ndarray, vector: bool = False):
    """SimpleITK image of ``array`` (``[*S]`` or ``[*S, C]`` with ``vector``) on the grid of ``affine``; a 2D array
    whose affine is not plain 2D becomes one slice of a 3D image."""
    sitk = _sitk()
    ndim = array.ndim - (1 if vector else 0)
    if ndim == 2 and not _plain_2d(np.asarray(affine, dtype=np.float64)):
        array, ndim = array[:, :, None], 3
    order = tuple(range(ndim))[::-1] + ((ndim,) if vector else ())
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(order)), isVector=vector)
    origin, spacing, direction = itk_geometry(affine, ndim)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _write(image, path: Path) -> Path:
    sitk = _sitk()
    fmt = image_format(path)
    if fmt not in ITK_WRITE_FORMATS or path.name.lower().endswith((".mhd", ".nhdr")):
        raise ValueError(f"{path}: outputs are single files ending in .nii.gz, .nii, .mha or .nrrd")
    ending = next(e for e in FORMATS[fmt] if path.name.lower().endswith(e))

    def write(tmp: str) -> None:
        # SimpleITK chooses the writer by the file ending: write under the right one, then move onto tmp.
        target = Path(tmp + ending)
        try:
            sitk.WriteImage(image, str(target), useCompression=True)
            target.replace(tmp)
        finally:
            if target.exists():
                target.unlink()

    return atomic_write(path, write)


def write_image(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` ``[*S]`` (2 or 3 axes, i, j, k order, any numeric dtype) on the grid of the voxel -> RAS
    ``affine`` to ``path`` in the format of its ending (``.mha``, ``.nrrd``, ``.nii.gz``), atomically."""
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"array must have 2 or 3 axes, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return _write(_itk_image(array, np.asarray(affine, dtype=np.float64)), Path(path))


def write_displacement(path: str | Path, field: np.ndarray, affine: np.ndarray) -> Path:
    """Write a field ``[ndim, *S]`` in voxels of the grid of ``affine`` as an ITK displacement field: vectors in
    LPS millimetres (``u_lps = diag(-1, -1, 1) A u_voxels``, ``A`` the affine's linear part), float64."""
    field = np.asarray(field, dtype=np.float64)
    ndim = field.shape[0]
    if field.ndim != ndim + 1 or ndim not in (2, 3):
        raise ValueError(f"field must have shape [ndim, *S] with ndim 2 or 3, got {field.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    physical = np.einsum("ij,j...->...i", LPS_TO_RAS @ affine[:3, :ndim], field)  # [*S, 3], LPS mm
    if ndim == 2 and _plain_2d(affine):
        physical = physical[..., :2]  # the z component of an in-plane vector is 0
    return _write(_itk_image(physical, affine, vector=True), Path(path))


def read_displacement(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK displacement field (LPS mm vectors) back as voxels ``[ndim, *S]`` (float64) of its own grid, and
    the grid's voxel -> RAS affine. A field of 2 components on a 2D grid gives ``[2, H, W]``."""
    sitk = _sitk()
    path = Path(path)
    _check_declared(path, "displacement", _checked(path, "displacement"), stream=True)
    image = _read_itk(path, "displacement")
    ndim, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if components != ndim:
        raise ValueError(f"displacement {path}: expected {ndim} components per voxel on a {ndim}D grid, got "
                         f"{components}")
    vectors = sitk.GetArrayFromImage(image).astype(np.float64)  # [z, y, x, c] or [y, x, c]
    vectors = vectors.transpose(tuple(range(ndim))[::-1] + (ndim,))
    affine = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    lps_linear = (LPS_TO_RAS @ affine[:3, :3])[:ndim, :ndim]
    field = np.einsum("ij,...j->i...", np.linalg.inv(lps_linear), vectors)
    return field, affine

