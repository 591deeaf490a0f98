"""The phantom's anatomy, materials and image: a random thorax label map, tissue properties and a CT-like rendering.

Orientation (RAS+, affine :func:`.writer.phantom_affine`): array axis 0 points to the patient's right, axis 1
anterior (3D only) and the last axis superior (cranial); a 2D phantom is a coronal slice (axes right, superior),
and its affine says so. Classes
(:data:`CLASS_NAMES`): 0 background (air), 1 soft_tissue, 2 lung, 3 bone, 4 liver. Materials (:data:`TISSUES`,
Young's modulus E in kPa, Poisson ratio nu): bone 1000/0.3 >> liver 30/0.4 > soft tissue 10/0.3 > lung 2/0.3 > air
1/0.1. Air is a very soft compressible material (not a void), so the body can expand into it.

Two image regimes (:data:`TEXTURES`, :func:`render`) draw the same random fields, so a subject differs between them
only in its image. ``rich``: texture well above the noise in every tissue (muscle fibres, fat septa, liver
vessels, as in contrast-enhanced CT; intensities :data:`HU`). ``ct``: non-contrast CT as in NLST or Lung CT
(intensities :data:`HU_CT`): soft tissue, fat and liver homogeneous, so only the image noise remains there; lung
parenchyma with vessels (as in ``rich``); bone with a compact cortex (its outer voxel layer) around marrow. The
values, from published CT measurements:

- air -1000 HU and water 0 HU define the scale;
- fat -100 HU: the centre of the adipose window -150..-50 HU of Yoshizumi et al. 1999 (Radiology, standardized
  measurement of abdominal fat at CT);
- skeletal muscle (soft tissue) 45 HU: within the muscle window -29..150 HU of Mitsiopoulos et al. 1998 (J Appl
  Physiol, cadaver validation of muscle measurement by CT) and the 40-50 HU mean attenuation of normal muscle
  in Goodpaster et al. 2000 (J Appl Physiol, muscle attenuation and lipid content);
- liver 60 HU: normal unenhanced liver is 55-65 HU, about 10 HU above the spleen; steatosis lowers it below
  40 HU (Kodama et al. 2007, AJR, CT methods for hepatic fat content);
- lung parenchyma -860 HU: healthy lung lies well above the -950 HU emphysema threshold of Gevenois et al. 1996
  (Am J Respir Crit Care Med, CT densitometry against morphometry), near -850 HU at inspiration; the vessels
  (unenhanced blood ~40 HU) reach -80 HU in a voxel larger than they are (partial volume);
- bone: marrow (trabecular bone) 200 HU, above the 160 HU below which Pickhardt et al. 2013 (Ann Intern Med,
  opportunistic osteoporosis screening at CT) find vertebral trabecular bone osteoporotic; cortex 1000 HU, the
  lower end of compact bone (>= 1000 HU), as a voxel of cortex partly fills with marrow;
- noise: filtered back-projection chest CT at routine dose has a noise of 30-38 HU in fat and aorta, 47-60 HU
  at half the dose (den Harder et al. 2018, Eur Radiol Exp, emphysema quantification under dose reduction),
  at about 1 mm; averaged over a 2 mm voxel (4-8 such voxels) that is 15-30 HU, so the phantom's default noise
  (``noise_std`` of :func:`.subject.generate_subject`, 20 HU, added after rendering) serves both regimes.

The dataset maps HU to [0, 1] through the window -1000..1000 HU for both regimes.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

__all__ = ["CLASS_NAMES", "TISSUES", "HU", "HU_CT", "TEXTURES", "RIB_HEIGHT_MM", "RIB_DEPTH_MM", "SPINE_RADIUS_MM",
           "anatomy", "render", "place_keypoints"]

CLASS_NAMES = ("background", "soft_tissue", "lung", "bone", "liver")

#: Nominal tissue properties: Young's modulus E (kPa) and Poisson ratio nu. Ordered bone >> liver > soft tissue
#: > lung > air. Bone is compressed to 100x soft tissue (real bone is ~1e6x) to keep the system well conditioned;
#: air is a very soft, compressible material so the body can move inside the field of view.
TISSUES: dict[str, dict[str, float]] = {
    "background": {"E": 1.0, "nu": 0.1},
    "soft_tissue": {"E": 10.0, "nu": 0.3},
    "lung": {"E": 2.0, "nu": 0.3},
    "bone": {"E": 1000.0, "nu": 0.3},
    "liver": {"E": 30.0, "nu": 0.4},
}

#: Physical size of the bone (mm), floored at 3 voxels of the generated grid by :func:`anatomy`: rib height
#: (craniocaudal, drawn per subject), rib depth (radial) and the spine's radius (3D). Real mid-shaft ribs are about
#: a centimetre high and half as thick; the phantom's thorax is smaller than an adult's, and so are its ribs.
RIB_HEIGHT_MM = (5.0, 8.0)
RIB_DEPTH_MM = 5.0
SPINE_RADIUS_MM = 8.0

#: Mean intensities (HU) of the rendered tissues in the ``rich`` regime.
HU = {"air": -1000.0, "fat": -90.0, "soft_tissue": 40.0, "lung": -860.0, "bone": 650.0, "liver": 60.0}

#: Intensities (HU) of the ``ct`` regime (non-contrast CT; sources in the module docstring).
HU_CT = {"air": -1000.0, "fat": -100.0, "soft_tissue": 45.0, "lung": -860.0, "bone_marrow": 200.0,
         "bone_cortex": 1000.0, "liver": 60.0}

#: Image regimes of :func:`render`.
TEXTURES = ("rich", "ct")


def _wobble(coords: dict[str, np.ndarray], rng: np.random.Generator, amplitude: float, terms: int = 3) -> np.ndarray:
    """Smooth random shape perturbation: a sum of low-frequency plane waves of total amplitude ~``amplitude``."""
    out = np.zeros_like(next(iter(coords.values())))
    for _ in range(terms):
        direction = rng.normal(size=len(coords))
        direction *= rng.uniform(1.0, 3.0) * np.pi / np.linalg.norm(direction)
        phase = sum(d * c for d, c in zip(direction, coords.values()))
        out += amplitude / terms * rng.uniform(0.5, 1.0) * np.sin(phase + rng.uniform(0, 2 * np.pi))
    return out


def _radius(coords: dict[str, np.ndarray], centre: dict[str, float], semi: dict[str, float],
            power: float = 2.0) -> np.ndarray:
    """Superellipsoid radius ``(sum |(c - centre) / semi|^p)^(1/p)`` over the axes present (< 1 inside)."""
    total = sum(np.abs((coords[name] - centre[name]) / semi[name]) ** power for name in coords)
    return total ** (1.0 / power)


def anatomy(shape: tuple[int, ...], rng: np.random.Generator,
            spacing: tuple[float, ...] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Random thorax label map ``[*S]`` (uint8, classes of :data:`CLASS_NAMES`) and helper regions.

    Geometry lives in normalised coordinates in [-1, 1] per axis: ``lat`` (axis 0, + = right), ``ap`` (3D axis 1,
    + = anterior) and ``cc`` (last axis, + = superior); a 2D phantom is the coronal plane ap = 0. The organs scale
    with the field of view; the bone has a physical size (``spacing``, mm per voxel, default 2): a rib cross-section
    :data:`RIB_HEIGHT_MM` high (craniocaudal) and :data:`RIB_DEPTH_MM` deep (radial), the spine (3D)
    :data:`SPINE_RADIUS_MM` in radius, no larger than the field of view allows (ribs at most 8% of it high and half
    the chest wall deep, the spine's radius at most 9-12% of the body's) and at least 3 voxels across on the
    generated grid (ribs 3-4 voxels high, spine 5-6 across), so that the bone's stiffness can act on the image. The chest wall is widened where needed to hold the ribs, and the lungs keep one
    voxel of soft tissue (intercostal muscle) off the bone.
    """
    ndim = len(shape)
    spacing = (2.0,) * ndim if spacing is None else tuple(float(s) for s in spacing)
    voxel = [2.0 / (m - 1) for m in shape]  # one voxel per axis, normalised units
    names = ("lat", "cc") if ndim == 2 else ("lat", "ap", "cc")
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, m) for m in shape], indexing="ij")
    c = dict(zip(names, grids))
    lat, cc = c["lat"], c["cc"]
    ap = c.get("ap", np.zeros_like(lat))
    u = rng.uniform

    # Body: a barrel-shaped superelliptic cylinder along cc, cut by the top and bottom of the field of view like
    # a thorax CT (the Dirichlet border then holds the neck and the pelvis, not air). rho is the transverse
    # radius relative to the body outline at the same level (< 1 inside the body).
    # The lateral air gap leaves room for the chest wall to move out without folding the (soft) air.
    a, b, p, barrel = u(0.72, 0.84), u(0.62, 0.78), u(2.6, 3.6), u(0.08, 0.16)
    taper = 1.0 - barrel * (cc - u(-0.2, 0.2)) ** 2
    rho = (np.abs(lat / (a * taper)) ** p + np.abs(ap / (b * taper)) ** p) ** (1.0 / p)
    body = rho + _wobble(c, rng, 0.02) < 1.0
    wall = u(0.13, 0.18)
    mediastinum = u(0.08, 0.14) * a

    # Lungs between apex and base levels (the left base a little higher, the left lung narrower: the heart).
    lungs = np.zeros(shape, dtype=bool)
    extents = {}
    apex, base = u(0.72, 0.85), u(-0.45, -0.25)
    for side in (1, -1):  # right, left
        top, bottom = apex - u(0.0, 0.05), base + (0.0 if side == 1 else u(0.0, 0.08))
        narrow = 1.0 if side == 1 else u(0.85, 0.95)
        centre = dict(lat=side * u(0.45, 0.52) * a, ap=u(-0.05, 0.05) * b, cc=0.5 * (top + bottom))
        semi = dict(lat=u(0.4, 0.48) * a * narrow, ap=u(0.6, 0.75) * b, cc=0.5 * (top - bottom))
        lung = (_radius(c, centre, semi) + _wobble(c, rng, 0.06) < 1.0) & (rho < 1.0 - wall) & body
        lung &= side * lat > mediastinum
        lungs |= lung
        extents[side] = (centre, semi)

    # Liver: its dome rises into the base of the right lung (the diaphragm is the lung-liver interface); its
    # lower edge stays well above the bottom of the field of view so the abdomen below can be compressed.
    dome, liver_bottom = base + u(0.1, 0.2), u(-0.72, -0.6)
    liver_semi = dict(lat=u(0.5, 0.62) * a, ap=u(0.55, 0.75) * b, cc=0.5 * (dome - liver_bottom))
    liver_centre = dict(lat=u(0.25, 0.4) * a, ap=0.0, cc=0.5 * (dome + liver_bottom))
    liver_shape = _radius(c, liver_centre, liver_semi) + _wobble(c, rng, 0.05)
    liver = (liver_shape < 1.0) & (rho < 1.0 - 0.5 * wall) & body
    # The same shape mirrored under the left lung: stomach/spleen, soft tissue that carries the left diaphragm.
    mirrored = dict(c, lat=-lat)
    left_abdomen = (_radius(mirrored, liver_centre, liver_semi) < 1.0) & body & ~liver

    # Ribs: bands of the chest wall at regularly spaced levels over the lungs, sloping down anteriorly (3D). The
    # band is 2 * half high with half >= 2 voxels (3 or 4 voxels whatever the offset of the level); the levels are
    # spread out so that neighbouring ribs keep a gap of a voxel or more.
    top = max(e[0]["cc"] + e[1]["cc"] for e in extents.values())
    bottom = min(e[0]["cc"] - e[1]["cc"] for e in extents.values())
    half = max(min(0.5 * u(*RIB_HEIGHT_MM) * voxel[-1] / spacing[-1], 0.04), 2.0 * voxel[-1])
    span = top - bottom - 0.1
    fitting = 1 + int(0.7 * span // (2.0 * half + voxel[-1]))  # adjacent levels stay >= 0.7 period apart
    count = max(min(int(rng.integers(5, 10)), fitting), 2)
    levels = np.linspace(bottom + 0.05, top - 0.05, count)
    levels += u(-0.15, 0.15, count) * (levels[1] - levels[0])
    rib_level = cc + 0.12 * ap
    bands = np.zeros(shape, dtype=bool)
    for value in levels:
        bands |= np.abs(rib_level - value) < half
    # Radially: the voxels within RIB_DEPTH_MM (>= 3 voxels) of the outer edge at 0.3 wall under the skin.
    inside_wall = body & (rho < 1.0 - 0.3 * wall)
    in_plane_mm = [(m - 1) * s / 2.0 for m, s in zip(shape[:ndim - 1], spacing)]  # mm per normalised unit
    depth_cap_mm = 0.5 * wall * min(a, b if ndim == 3 else a) * min(in_plane_mm)
    depth_mm = max(min(RIB_DEPTH_MM, depth_cap_mm), 3.0 * max(spacing[:ndim - 1]))
    shell = inside_wall & (ndi.distance_transform_edt(inside_wall, sampling=spacing) <= depth_mm + 1e-6)
    ribs = bands & shell
    if ndim == 3:
        ribs &= ap < 0.55 * b  # costal cartilage gap anteriorly
        spine_centre = -u(0.6, 0.7) * b
        radius = max(min(SPINE_RADIUS_MM * voxel[0] / spacing[0], u(0.09, 0.12) * min(a, b)), 2.5 * max(voxel[:2]))
        # A rounded square (a vertebral body): thick to its edges, where a disk would end in thin caps.
        spine = (lat ** 4 + (ap - spine_centre) ** 4 < radius ** 4) & body
        ribs |= spine
    lungs &= ~ndi.binary_dilation(ribs)
    liver &= ~ribs

    labels = np.zeros(shape, dtype=np.uint8)
    labels[body] = 1
    labels[lungs] = 2
    labels[liver] = 4
    labels[ribs] = 3
    fat = body & (rho > 1.0 - u(0.04, 0.08)) & (labels == 1)
    wall_band = body & (rho > 1.0 - wall) & (cc > bottom) & (cc < top) & ~lungs & ~liver
    radial = np.stack([lat / a, ap / b]) if ndim == 3 else np.stack([lat / a])
    radial = radial / np.maximum(np.sqrt((radial ** 2).sum(0)), 1e-6)
    regions = dict(fat=fat, left_abdomen=left_abdomen & (labels == 1), wall=wall_band, outward=radial)
    return labels, regions


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian random field of unit standard deviation and correlation length ``sigma`` voxels."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(field.std(), 1e-12)


def _vessels(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, width: float) -> np.ndarray:
    """Vessel-like network in [0, 1]: the zero set of a random field (2D curves) or of two fields (3D tubes)."""
    squared = sum(_noise(rng, shape, sigma) ** 2 for _ in range(len(shape) - 1))
    return np.exp(-0.5 * squared / width ** 2)


def render(labels: np.ndarray, regions: dict[str, np.ndarray], rng: np.random.Generator,
           texture: str = "rich") -> tuple[np.ndarray, np.ndarray]:
    """Noise-free CT-like image (HU, float64) in the regime ``texture`` (:data:`TEXTURES`) and the lung vessel map
    used to place keypoints. Both regimes draw the same fields from ``rng``, so what follows is the same."""
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    shape = labels.shape
    wide = 2.0 if len(shape) == 3 else 1.0  # 3D tubes need a wider band to be about as dense as 2D curves
    lung_vessels = np.maximum(0.6 * _vessels(rng, shape, 1.5, 0.3 * wide), _vessels(rng, shape, 3.0, 0.25 * wide))
    # The rich regime's texture (muscle fibres, fat septa, liver vessels) well above the image noise, so that
    # motion inside the soft tissues is visible in the images, as it is in contrast-enhanced CT.
    terms = {"soft_tissue": [50.0 * _noise(rng, shape, 1.5)], "fat": [30.0 * _noise(rng, shape, 1.5)],
             "lung": [20.0 * _noise(rng, shape, 1.0), 780.0 * lung_vessels]}
    terms["liver"] = [25.0 * _noise(rng, shape, 1.5), 100.0 * _vessels(rng, shape, 2.5, 0.25)]
    terms["bone"] = [120.0 * _noise(rng, shape, 1.0)]
    bone = labels == 3
    if texture == "rich":
        tissue_hu = {name: sum(terms[name], HU[name]) for name in terms}
    else:
        # Homogeneous soft tissue, fat and liver; the lungs as in ``rich``; cortex (bone voxels with a face
        # neighbour outside the bone) around marrow.
        marrow = ndi.binary_erosion(bone, border_value=1)
        tissue_hu = {name: HU_CT[name] for name in ("soft_tissue", "fat", "liver")}
        tissue_hu["lung"] = sum(terms["lung"], HU_CT["lung"])
        tissue_hu["bone"] = np.where(marrow, HU_CT["bone_marrow"], HU_CT["bone_cortex"])
    image = np.full(shape, HU["air"])
    for name, where in (("soft_tissue", labels == 1), ("fat", regions["fat"]), ("lung", labels == 2),
                        ("liver", labels == 4), ("bone", bone)):
        value = tissue_hu[name]
        image[where] = value[where] if isinstance(value, np.ndarray) else value
    # Partial-volume blur of the sharp label edges.
    return ndi.gaussian_filter(image, 0.6), lung_vessels


def place_keypoints(labels: np.ndarray, vessels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` fixed keypoints ``[N, ndim]`` (voxels): ~70% in the lungs (preferring vessels), the rest in
    the liver, 3 voxels off the image border (fewer only when the organs hold too few voxels on a coarse grid)."""
    shape = labels.shape
    margin = np.zeros(shape, dtype=bool)
    margin[tuple(slice(3, m - 3) for m in shape)] = True
    points = []
    for cls, share in ((2, 0.7), (4, 0.3)):
        wanted = int(round(share * count)) if cls == 2 else count - len(points)
        # Keep off the organ boundary (2 voxels) unless the organ is too small for that on a coarse grid.
        for depth in (2, 1, 0):
            tissue = labels == cls
            inside = (ndi.binary_erosion(tissue, iterations=depth) if depth else tissue) & margin
            if inside.sum() >= wanted:
                break
        candidates = np.flatnonzero(inside)
        wanted = min(wanted, candidates.size)
        if wanted <= 0:
            continue
        weights = (0.2 + vessels.ravel()[candidates]) if cls == 2 else np.ones(candidates.size)
        chosen = rng.choice(candidates, size=wanted, replace=False, p=weights / weights.sum())
        points.extend(np.stack(np.unravel_index(chosen, shape), axis=1))
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(shape))
    # Sub-voxel positions; a jitter below 0.5 keeps each point in the voxel (and class) it was drawn from.
    return points + rng.uniform(-0.4, 0.4, size=points.shape)
