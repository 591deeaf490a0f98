"""Registration evaluation metrics: overlap, surface distance, landmark error and field regularity.

Conventions (as everywhere in the project): label maps are integer arrays, fields are ``[B, ndim, *S]`` (or
``[ndim, *S]``) in voxels on the fixed grid with channel k along array axis k, and a fixed point ``p`` maps to
``p + u(p)`` in moving voxel coordinates. ``spacing`` is a tuple of ``ndim`` floats in mm (``None`` = 1 mm).
Metrics run in torch on the input's device; numpy inputs are converted (to CPU tensors).

Returns, by function:

- :func:`dice` -> :class:`DiceScores` of float64 tensors on the input's device: ``per_class`` ``[K]`` and
  ``mean`` ``[]`` for unbatched ``[*S]`` maps, ``[B, K]`` and ``[B]`` for batched ``[B, 1, *S]`` maps. A class
  absent from both maps scores NaN; ``mean`` averages the foreground classes (id != 0) ignoring NaN, and is NaN
  when every foreground class is NaN.
- :func:`hd95` -> Python ``float`` in mm (NaN when both masks are empty, ``inf`` when exactly one is).
  :func:`hd95_per_class` -> ``np.ndarray`` float64 ``[K]`` with the same NaN/inf rule per class.
- :func:`tre` -> float64 tensor ``[N]`` of per-point distances in mm, on the displacement's device.
- :func:`jacobian_determinant` -> tensor ``[B, *S]`` (or ``[*S]``) in the field's floating dtype and device.
- :func:`strain_tensor` -> ``[B, ndim, ndim, *S]`` (or ``[ndim, ndim, *S]``), :func:`strain_magnitude` ->
  ``[B, *S]`` (or ``[*S]``), dimensionless (mm per mm), in the field's floating dtype and device.
- :func:`sdlogj`, :func:`folding_percent` -> Python ``float`` for an unbatched field ``[ndim, *S]``, float64
  tensor ``[B]`` for a batched field ``[B, ndim, *S]``.
- :func:`warp_labels`, :func:`warp_image` -> same container type (numpy or torch), dtype and shape as the input
  (a batch-1 input warped by a batch-B field comes back with batch B).

Field shapes are told apart by their rank: 5-D is ``[B, 3, *S]``, 3-D is ``[2, *S]``, and 4-D is ``[B, 2, H, W]``
when ``shape[1] == 2``, otherwise ``[3, D, H, W]``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import numpy as np
import scipy.ndimage as ndi
import torch

from .tensors import check_field, check_image, check_spacing
from .transform import sample_at_points, warp

__all__ = [
    "DiceScores",
    "dice",
    "hd95",
    "hd95_per_class",
    "tre",
    "jacobian_determinant",
    "strain_tensor",
    "strain_magnitude",
    "sdlogj",
    "folding_percent",
    "determinant_sdlogj",
    "determinant_folding_percent",
    "warp_labels",
    "warp_image",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
Classes = Union[int, Sequence[int], np.ndarray, torch.Tensor]


class DiceScores(NamedTuple):
    """Dice overlap: ``per_class`` ``[K]`` or ``[B, K]`` and the NaN-ignoring foreground ``mean`` ``[]`` or ``[B]``."""

    per_class: torch.Tensor
    mean: torch.Tensor


# --------------------------------------------------------------------------------------------- helpers

def _as_tensor(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    """numpy array or tensor -> tensor (numpy goes to ``device`` or the CPU; tensors stay where they are)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # torch cannot wrap negative strides (flipped views), hence the contiguous copy when needed.
        return torch.as_tensor(np.ascontiguousarray(x), device=device)
    raise ValueError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")


def _class_ids(classes: Classes) -> torch.Tensor:
    """``classes`` (an int C meaning ids 0..C-1, or a sequence of distinct ids) -> int64 tensor ``[K]``."""
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"classes must be a positive class count or a sequence of class ids, got {classes}")
        return torch.arange(int(classes))
    ids = torch.as_tensor(np.asarray(classes.cpu() if isinstance(classes, torch.Tensor) else classes))
    if ids.dim() != 1 or ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"classes must be an int or a non-empty 1-D sequence of integer ids, got {classes!r}")
    if torch.unique(ids).numel() != ids.numel() or (ids < 0).any():
        raise ValueError(f"classes must be distinct non-negative ids, got {ids.tolist()}")
    return ids.to(torch.int64)


def _check_labels(labels: torch.Tensor, name: str) -> torch.Tensor:
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be an integer label map, got dtype {labels.dtype}")
    return labels.to(torch.int64)


def _class_index(labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Position of each label in ``ids`` ``[K]`` (non-negative, distinct), or K for a label that is not listed."""
    k = ids.numel()
    if torch.equal(ids.cpu(), torch.arange(k)):  # the usual ids 0..C-1 need no lookup table
        return torch.where((labels >= 0) & (labels < k), labels, k)
    top = int(ids.max()) + 2  # table slot 0 takes negative labels, slot ``top`` labels above the largest id
    table = torch.full((top + 1,), k, dtype=torch.int64, device=labels.device)
    table[ids + 1] = torch.arange(k, device=labels.device)
    return table[(labels + 1).clamp_(0, top)]


def _split_field(displacement: ArrayLike, name: str = "displacement") -> tuple[torch.Tensor, bool]:
    """Field ``[B, ndim, *S]`` or ``[ndim, *S]`` -> (validated ``[B, ndim, *S]`` tensor, was_batched).

    A 4-D tensor is read as a batched 2D field when ``shape[1] == 2`` and as an unbatched 3D field otherwise.
    """
    field = _as_tensor(displacement, name)
    if not field.is_floating_point():
        field = field.to(torch.float64)
    if field.dim() == 5 or (field.dim() == 4 and field.shape[1] == 2):
        batched = True
    elif field.dim() == 3 or (field.dim() == 4 and field.shape[0] == 3):
        batched, field = False, field.unsqueeze(0)
    else:
        raise ValueError(f"{name} must have shape [B, ndim, *S] or [ndim, *S] with ndim 2 or 3, "
                         f"got shape {tuple(field.shape)}")
    check_field(field, name)
    return field, batched


def _voxel_mask(mask: ArrayLike | None, batch: int, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Mask ``[*S]``, ``[1, 1, *S]`` or ``[B, 1, *S]`` (nonzero = inside) -> bool ``[B or 1, *S]``."""
    if mask is None:
        return torch.ones((1,) + spatial, dtype=torch.bool, device=device)
    m = _as_tensor(mask, "mask", device).to(device)
    if tuple(m.shape) == spatial:
        m = m.unsqueeze(0)
    elif m.dim() == len(spatial) + 2 and m.shape[0] in (1, batch) and m.shape[1] == 1 \
            and tuple(m.shape[2:]) == spatial:
        m = m[:, 0]
    else:
        raise ValueError(f"mask must have shape {list(spatial)}, [1, 1, *S] or [{batch}, 1, *S] with "
                         f"S = {list(spatial)}, got shape {tuple(m.shape)}")
    return m != 0


def _per_sample(values: torch.Tensor, batched: bool) -> torch.Tensor | float:
    return values if batched else float(values[0])


# --------------------------------------------------------------------------------------------- overlap

def dice(fixed_labels: ArrayLike, warped_labels: ArrayLike, classes: Classes) -> DiceScores:
    """Dice overlap ``2|F_k & W_k| / (|F_k| + |W_k|)`` per class between two integer label maps.

    Maps are unbatched ``[*S]`` or batched ``[B, 1, *S]``; a batch-1 map broadcasts against a batch-B map (one
    fixed map against many warped ones). ``classes`` is a count C (ids 0..C-1) or a sequence of K ids; columns
    of ``per_class`` follow that order and labels not listed are ignored. A class absent from both maps has no
    defined overlap: it scores NaN (never 0) and is left out of ``mean``, the average over foreground ids
    (!= 0). Returns float64 ``per_class`` ``[K]`` / ``[B, K]`` and ``mean`` ``[]`` / ``[B]`` on the input's device.
    """
    fixed = _check_labels(_as_tensor(fixed_labels, "fixed_labels"), "fixed_labels")
    warped = _check_labels(_as_tensor(warped_labels, "warped_labels"), "warped_labels").to(fixed.device)
    batched = fixed.dim() in (4, 5)
    if fixed.dim() != warped.dim() or fixed.dim() not in (2, 3, 4, 5):
        raise ValueError(f"fixed_labels and warped_labels must both be [*S] (2D/3D) or both [B, 1, *S], got "
                         f"shapes {tuple(fixed.shape)} and {tuple(warped.shape)}")
    if batched:
        if fixed.shape[1] != 1 or warped.shape[1] != 1:
            raise ValueError(f"fixed_labels and warped_labels must have one channel [B, 1, *S], got shapes "
                             f"{tuple(fixed.shape)} and {tuple(warped.shape)}")
        if fixed.shape[0] != warped.shape[0] and 1 not in (fixed.shape[0], warped.shape[0]):
            raise ValueError(f"batch sizes of fixed_labels ({fixed.shape[0]}) and warped_labels "
                             f"({warped.shape[0]}) must be equal or one of them 1")
    else:
        fixed, warped = fixed[None, None], warped[None, None]
    if fixed.shape[2:] != warped.shape[2:]:
        raise ValueError(f"fixed_labels and warped_labels must share the spatial shape, got "
                         f"{tuple(fixed.shape[2:])} and {tuple(warped.shape[2:])}")

    ids = _class_ids(classes).to(fixed.device)
    k1 = ids.numel() + 1  # one extra bin collects labels that are not listed
    f = _class_index(fixed.reshape(fixed.shape[0], -1), ids)
    w = _class_index(warped.reshape(warped.shape[0], -1), ids)
    batch = max(f.shape[0], w.shape[0])
    # One joint histogram of (sample, fixed class, warped class) over all voxels: its diagonal holds the
    # intersections and its margins the class sizes, in a single bincount with no loop over classes or samples.
    # In-place adds on the [B, N] index keep this to one full-size temporary besides the class indices.
    joint = w if w.shape[0] == batch else w.expand(batch, -1).clone()
    joint += f * k1
    joint += torch.arange(batch, device=f.device).view(batch, 1) * (k1 * k1)
    confusion = torch.bincount(joint.view(-1), minlength=batch * k1 * k1).view(batch, k1, k1).to(torch.float64)
    intersection = confusion.diagonal(dim1=1, dim2=2)[:, :-1]
    denominator = confusion.sum(2)[:, :-1] + confusion.sum(1)[:, :-1]
    per_class = torch.where(denominator > 0, 2.0 * intersection / denominator.clamp(min=1.0),
                            torch.full_like(denominator, float("nan")))
    mean = torch.nanmean(per_class[:, ids != 0], dim=1)  # NaN when no foreground class is defined
    if not batched:
        return DiceScores(per_class[0], mean[0])
    return DiceScores(per_class, mean)


# --------------------------------------------------------------------------------------------- surface distance

def _as_mask(x: ArrayLike, name: str) -> np.ndarray:
    """Binary mask (numpy or torch, any dtype; nonzero = inside) -> numpy bool array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")
    return x != 0


def hd95(a: ArrayLike, b: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the symmetric surface distance between binary masks ``a`` and ``b`` ``[*S]``, in mm.

    The surface of a mask is the mask minus its erosion (face connectivity; voxels on the array border count
    as surface). The distances from every surface voxel of ``a`` to the nearest surface voxel of ``b`` and
    from every surface voxel of ``b`` to ``a`` are pooled and their 95th percentile (numpy's linear
    interpolation) is returned. ``spacing`` in mm per axis; the default 1 gives voxels, as the Learn2Reg
    evaluator does. Both masks empty -> NaN (nothing to compare); exactly one empty -> ``inf`` (the structure
    was lost, which must not vanish from an average). Computed with scipy on the CPU.
    """
    a, b = _as_mask(a, "a"), _as_mask(b, "b")
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"a and b must be 2D or 3D masks [*S] of the same shape, got {a.shape} and {b.shape}")
    sampling = check_spacing(spacing, a.ndim)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not (has_a or has_b):
        return float("nan")
    if not (has_a and has_b):
        return float("inf")
    # Both masks are empty outside the bounding box of their union, so cropping to it changes neither the
    # surfaces nor the distances between them, and keeps the distance transforms small.
    box = ndi.find_objects((a | b).astype(np.uint8))[0]
    a, b = a[box], b[box]
    surface_a = a & ~ndi.binary_erosion(a)
    surface_b = b & ~ndi.binary_erosion(b)
    to_b = ndi.distance_transform_edt(~surface_b, sampling=sampling)[surface_a]
    to_a = ndi.distance_transform_edt(~surface_a, sampling=sampling)[surface_b]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def hd95_per_class(fixed_labels: ArrayLike, warped_labels: ArrayLike, classes: Classes,
                   spacing: Sequence[float] | None = None) -> np.ndarray:
    """:func:`hd95` of each class between two label maps ``[*S]`` (or ``[1, 1, *S]``); float64 ``[K]`` in mm.

    ``classes`` as in :func:`dice`. A class absent from both maps is NaN, one present in only one map is inf.
    """
    maps = []
    for name, labels in (("fixed_labels", fixed_labels), ("warped_labels", warped_labels)):
        t = _check_labels(_as_tensor(labels, name), name)
        if t.dim() in (4, 5) and t.shape[:2] == (1, 1):
            t = t[0, 0]
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must have shape [*S] (2D/3D) or [1, 1, *S], got shape {tuple(t.shape)}")
        maps.append(t.detach().cpu().numpy())
    ids = _class_ids(classes).tolist()
    return np.array([hd95(maps[0] == k, maps[1] == k, spacing) for k in ids], dtype=np.float64)


# --------------------------------------------------------------------------------------------- landmarks

def tre(fixed_keypoints: ArrayLike, moving_keypoints: ArrayLike, displacement: ArrayLike,
        spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Target registration error per keypoint pair, in mm; float64 ``[N]`` on the displacement's device.

    Keypoints are ``[N, ndim]`` voxel coordinates; ``displacement`` ``[ndim, *S]`` or ``[1, ndim, *S]`` in voxels
    on the fixed grid. ``u`` is linearly interpolated at each fixed keypoint ``p`` (border value outside the
    grid) and ``|(p + u(p) - q) * spacing|`` is returned for the moving keypoint ``q``. The mean of the result
    is the TRE (this is the plain Euclidean distance, not the square root of a mean).
    """
    field = _as_tensor(displacement, "displacement")
    p = _as_tensor(fixed_keypoints, "fixed_keypoints", field.device).to(field.device, torch.float64)
    q = _as_tensor(moving_keypoints, "moving_keypoints", field.device).to(field.device, torch.float64)
    if p.dim() != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"fixed_keypoints must have shape [N, ndim] with ndim 2 or 3, got shape {tuple(p.shape)}")
    if q.shape != p.shape:
        raise ValueError(f"moving_keypoints must have the shape of fixed_keypoints {tuple(p.shape)}, "
                         f"got {tuple(q.shape)}")
    if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("fixed_keypoints and moving_keypoints must be finite")
    ndim = p.shape[1]
    if field.dim() == ndim + 1:
        field = field.unsqueeze(0)
    if field.dim() != ndim + 2 or field.shape[0] != 1:
        raise ValueError(f"displacement must have shape [{ndim}, *S] or [1, {ndim}, *S] to match {ndim}D keypoints, "
                         f"got shape {tuple(field.shape)}")
    field = field.to(torch.float64)
    check_field(field, "displacement")
    scale = torch.tensor(check_spacing(spacing, ndim), dtype=torch.float64, device=field.device)
    if p.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=field.device)
    u = sample_at_points(field[0], p)
    return ((p + u - q) * scale).norm(dim=1)


# --------------------------------------------------------------------------------------------- regularity

def _gradient_mm(displacement: ArrayLike, spacing: Sequence[float] | None) -> tuple[list[torch.Tensor], bool]:
    """Derivatives of the field in mm, ``grads[a][:, k] = d u_k / d x_a`` (each ``[B, ndim, *S]``), and whether
    the input was batched: central differences inside, one-sided at the borders (as ``numpy.gradient``)."""
    field, batched = _split_field(displacement)
    ndim, spatial = field.shape[1], tuple(field.shape[2:])
    if min(spatial) < 2:
        raise ValueError(f"displacement needs at least 2 voxels along every axis, got spatial shape {spatial}")
    sampling = check_spacing(spacing, ndim)
    if any(s != 1.0 for s in sampling):
        field = field * torch.tensor(sampling, dtype=field.dtype, device=field.device).view(1, ndim, *[1] * ndim)
    return list(torch.gradient(field, spacing=list(sampling), dim=tuple(range(2, ndim + 2)))), batched


def jacobian_determinant(displacement: ArrayLike, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Determinant of ``I + grad u`` per voxel: ``[B, ndim, *S]`` -> ``[B, *S]`` (``[ndim, *S]`` -> ``[*S]``).

    ``u`` in voxels. Derivatives are central differences inside and one-sided at the borders (as
    ``numpy.gradient``), so a linear field gives its exact determinant everywhere. With ``spacing`` the field is
    converted to mm (channel k times s_k, derivative along axis a divided by s_a); the Jacobian becomes
    ``S (I + D) S^-1``, whose determinant is the same, so the result does not depend on the spacing.
    Returned in the field's floating dtype, on its device.
    """
    grads, batched = _gradient_mm(displacement, spacing)
    ndim = len(grads)
    # jac[k][a] = delta_ka + d u_k / d x_a
    jac = [[grads[a][:, k] + (1.0 if k == a else 0.0) for a in range(ndim)] for k in range(ndim)]
    if ndim == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    else:
        det = (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
               - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
               + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))
    return det if batched else det[0]


def _strain(displacement: ArrayLike, spacing: Sequence[float] | None) -> tuple[torch.Tensor, bool]:
    grads, batched = _gradient_mm(displacement, spacing)
    ndim = len(grads)
    eps = torch.stack([torch.stack([0.5 * (grads[a][:, k] + grads[k][:, a]) for a in range(ndim)], dim=1)
                       for k in range(ndim)], dim=1)
    return eps, batched


def strain_tensor(displacement: ArrayLike, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Small-strain tensor ``eps = (grad u + grad u^T) / 2`` per voxel: ``[B, ndim, *S]`` -> ``[B, ndim, ndim, *S]``
    (``[ndim, *S]`` -> ``[ndim, ndim, *S]``), ``eps[k, a] = (d u_k / d x_a + d u_a / d x_k) / 2``.

    ``u`` in voxels, converted to mm with ``spacing`` (channel k times s_k, derivative along axis a divided by
    s_a), so the strain is dimensionless. Derivatives as in :func:`jacobian_determinant`: a linear field gives its
    exact strain everywhere, and a rigid translation none.
    """
    eps, batched = _strain(displacement, spacing)
    return eps if batched else eps[0]


def strain_magnitude(displacement: ArrayLike, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Frobenius norm ``|eps|`` of :func:`strain_tensor` per voxel: ``[B, ndim, *S]`` -> ``[B, *S]`` (``[ndim, *S]``
    -> ``[*S]``), dimensionless."""
    eps, batched = _strain(displacement, spacing)
    norm = eps.square().sum(dim=(1, 2)).sqrt()
    return norm if batched else norm[0]


def _masked_std(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Population std (ddof 0, as numpy) of ``values`` ``[B, *S]`` inside ``inside`` ``[1|B, *S]`` -> ``[B]``."""
    w = inside.expand_as(values).flatten(1).to(torch.float64)
    v = values.flatten(1).to(torch.float64)
    n = w.sum(1)
    mean = (w * v).sum(1) / n
    return ((w * (v - mean[:, None]) ** 2).sum(1) / n).sqrt()  # 0/0 = NaN for an empty mask


def sdlogj(displacement: ArrayLike, mask: ArrayLike | None = None, spacing: Sequence[float] | None = None,
           learn2reg: bool = False) -> torch.Tensor | float:
    """Standard deviation (ddof 0) of ``log(clip(det J, 1e-9))`` over the grid or inside ``mask``.

    ``displacement`` ``[B, ndim, *S]`` -> float64 ``[B]``; ``[ndim, *S]`` -> ``float``. ``mask`` ``[*S]``,
    ``[1, 1, *S]`` or ``[B, 1, *S]`` (nonzero = inside; an empty mask gives NaN). This plain variant is the one
    reported: folds (det <= 0) enter as log(1e-9) and raise it. ``learn2reg=True`` reproduces the Learn2Reg
    evaluator instead: ``log(clip(det + 3, 1e-9, 1e9))`` over the grid (and mask) without a 2-voxel border;
    the +3 shift keeps folds with det > -3 finite, so that variant barely sees them. Both use the determinant of
    :func:`jacobian_determinant` (equal to the evaluator's central differences away from the border).
    """
    field, batched = _split_field(displacement)
    det = jacobian_determinant(field, spacing)
    if learn2reg:
        inside = _voxel_mask(mask, field.shape[0], tuple(field.shape[2:]), field.device)
        if min(det.shape[1:]) <= 4:
            raise ValueError(f"learn2reg=True drops a 2-voxel border and needs more than 4 voxels per axis, got "
                             f"spatial shape {tuple(det.shape[1:])}")
        crop = (slice(None),) + (slice(2, -2),) * (det.dim() - 1)
        logj = torch.log((det[crop].to(torch.float64) + 3.0).clamp(1e-9, 1e9))
        return _per_sample(_masked_std(logj, inside[crop]), batched)
    return _per_sample(determinant_sdlogj(det, mask), batched)


def determinant_sdlogj(det: torch.Tensor, mask: ArrayLike | None = None) -> torch.Tensor:
    """:func:`sdlogj` from a determinant map already computed: ``[B, *S]`` -> float64 ``[B]``."""
    inside = _voxel_mask(mask, det.shape[0], tuple(det.shape[1:]), det.device)
    return _masked_std(torch.log(det.to(torch.float64).clamp(min=1e-9)), inside)


def determinant_folding_percent(det: torch.Tensor, mask: ArrayLike | None = None) -> torch.Tensor:
    """:func:`folding_percent` from a determinant map already computed: ``[B, *S]`` -> float64 ``[B]``."""
    inside = _voxel_mask(mask, det.shape[0], tuple(det.shape[1:]), det.device).expand_as(det).flatten(1)
    folded = ((det <= 0).flatten(1) & inside).sum(1).to(torch.float64)
    return 100.0 * folded / inside.sum(1).to(torch.float64)


def folding_percent(displacement: ArrayLike, mask: ArrayLike | None = None,
                    spacing: Sequence[float] | None = None) -> torch.Tensor | float:
    """Percentage (0-100) of voxels with ``det J <= 0``, over the grid or inside ``mask``.

    Shapes and mask as in :func:`sdlogj`: ``[B, ndim, *S]`` -> float64 ``[B]``, ``[ndim, *S]`` -> ``float``.
    """
    field, batched = _split_field(displacement)
    return _per_sample(determinant_folding_percent(jacobian_determinant(field, spacing), mask), batched)


# --------------------------------------------------------------------------------------------- warping

def _warp_any(image: ArrayLike, displacement: ArrayLike, mode: str, name: str) -> ArrayLike:
    """Shared body of :func:`warp_labels` and :func:`warp_image` (type, dtype and shape handling)."""
    if isinstance(image, np.ndarray):
        disp = _as_tensor(displacement, "displacement")
        dtype = image.dtype
        # torch lacks some numpy dtypes (unsigned, float16 on CPU): compute in int64 / float32 and cast back.
        if dtype.kind in "biu":
            img = torch.as_tensor(np.ascontiguousarray(image, dtype=np.int64), device=disp.device)
        elif dtype in (np.float32, np.float64):
            img = torch.as_tensor(np.ascontiguousarray(image), device=disp.device)
        else:
            img = torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32), device=disp.device)
    elif isinstance(image, torch.Tensor):
        img, dtype = image, image.dtype
        disp = _as_tensor(displacement, "displacement").to(img.device)
    else:
        raise ValueError(f"{name} must be a numpy array or torch.Tensor, got {type(image).__name__}")
    if not disp.is_floating_point():
        disp = disp.to(torch.float32)
    batched = disp.dim() == img.dim()
    if not batched:
        if disp.dim() != img.dim() + 1:
            raise ValueError(f"{name} [*S] needs displacement [ndim, *S] and {name} [B, C, *S] needs "
                             f"[B, ndim, *S]; got {name} {tuple(img.shape)} and displacement {tuple(disp.shape)}")
        img, disp = img[None, None], disp[None]
    check_image(img, name)
    check_field(disp, "displacement")
    out = warp(img, disp, mode=mode)
    if not batched:
        out = out[0, 0]
    if isinstance(image, np.ndarray):
        return out.cpu().numpy().astype(dtype, copy=False)
    return out.to(dtype)


def warp_labels(labels: ArrayLike, displacement: ArrayLike) -> ArrayLike:
    """Warp a label map by nearest-neighbour sampling at ``x + u(x)`` (border value outside the grid).

    ``labels`` ``[*S]`` with ``displacement`` ``[ndim, *S]``, or ``[B, C, *S]`` with ``[B, ndim, *S]`` (a batch-1
    map broadcasts to B); ``u`` in voxels. Returns the input's type (numpy or torch) and dtype.
    """
    return _warp_any(labels, displacement, "nearest", "labels")


def warp_image(image: ArrayLike, displacement: ArrayLike) -> ArrayLike:
    """Warp an image by (bi/tri)linear sampling at ``x + u(x)`` (border value outside the grid).

    Shapes as in :func:`warp_labels`. Returns the input's type (numpy or torch) and dtype; integer images are
    interpolated in floating point and rounded.
    """
    return _warp_any(image, displacement, "bilinear", "image")
