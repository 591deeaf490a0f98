"""Tests of phantom.py: the finite-difference elasticity solver, the subject generator, the dataset writer, the CLI."""
import json
import time

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from hypermorph_spatially_adaptive.data import phantom
from hypermorph_spatially_adaptive.core.transform import sample_at_points, warp


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def _free(shape):
    """Flat mask of the unknowns not fixed by the Dirichlet border, for all components."""
    interior = np.zeros(shape, dtype=bool)
    interior[tuple(slice(1, -1) for _ in shape)] = True
    return np.tile(interior.ravel(), len(shape))


def _blocky_materials(shape, rng, block=4):
    """Piecewise-constant Lame maps (kPa) drawn from the phantom's tissues: a heterogeneous test material."""
    coarse = rng.integers(0, len(phantom.CLASS_NAMES), size=tuple(-(-n // block) for n in shape))
    labels = np.kron(coarse, np.ones((block,) * len(shape), dtype=int))[tuple(slice(0, n) for n in shape)]
    table = np.array([phantom.lame_from_young(**phantom.TISSUES[name]) for name in phantom.CLASS_NAMES])
    return table[labels, 0], table[labels, 1]


# ---------------------------------------------------------------------------------------------------------------
# Elasticity
# ---------------------------------------------------------------------------------------------------------------

def test_lame_from_young_matches_hand_computed_values():
    lam, mu = phantom.lame_from_young(10.0, 0.3)
    assert lam == pytest.approx(10.0 * 0.3 / (1.3 * 0.4))
    assert mu == pytest.approx(10.0 / 2.6)
    with pytest.raises(ValueError, match="nu"):
        phantom.lame_from_young(1.0, 0.5)


@pytest.mark.parametrize("shape, spacing, solver, tol", [
    ((24, 20), (1.5, 2.0), "direct", 1e-9),
    ((10, 11, 12), (1.0, 2.0, 1.5), "cg", 1e-6),
])
def test_solver_residual_is_small_on_a_heterogeneous_problem(shape, spacing, solver, tol):
    rng = np.random.default_rng(0)
    lam, mu = _blocky_materials(shape, rng)
    force = rng.normal(size=(len(shape),) + shape)
    u = phantom.solve_elasticity(lam, mu, force, spacing, solver=solver)
    stiffness = phantom.elasticity_operator(lam, mu, spacing)
    rhs = phantom.load_vector(force, spacing)
    free = _free(shape)
    residual = (stiffness @ u.ravel() - rhs)[free]
    assert np.linalg.norm(residual) / np.linalg.norm(rhs[free]) < tol
    assert np.abs(u.reshape(len(shape), -1)[:, ~free[:u[0].size]]).max() == 0.0  # zero Dirichlet border


def test_operator_is_symmetric_and_positive_on_the_free_unknowns():
    rng = np.random.default_rng(1)
    lam, mu = _blocky_materials((9, 8), rng)
    stiffness = phantom.elasticity_operator(lam, mu, (1.0, 3.0))
    assert abs(stiffness - stiffness.T).max() < 1e-10
    free = _free((9, 8))
    dense = stiffness[free][:, free].toarray()
    assert np.linalg.eigvalsh(dense).min() > 0


AFFINE_CASES = [
    ((12, 10), (1.0, 1.0), "direct"),
    ((12, 10), (0.7, 2.5), "direct"),
    ((8, 9, 7), (1.0, 1.0, 1.0), "direct"),
    ((8, 9, 7), (2.0, 0.8, 1.3), "direct"),
    ((8, 9, 7), (2.0, 0.8, 1.3), "cg"),
]


@pytest.mark.parametrize("shape, spacing, solver", AFFINE_CASES)
def test_homogeneous_material_reproduces_an_affine_boundary_displacement(shape, spacing, solver):
    ndim = len(shape)
    matrix = np.array([[0.04, -0.03, 0.02], [0.05, -0.02, 0.01], [-0.01, 0.03, 0.06]])[:ndim, :ndim]
    exact = np.einsum("ka,a...->k...", matrix, _grid(shape)) + 0.3  # u = A x + t (uniform stretch and shear)
    lam, mu = np.full(shape, 7.0), np.full(shape, 2.0)
    u = phantom.solve_elasticity(lam, mu, np.zeros_like(exact), spacing, boundary=exact, solver=solver)
    np.testing.assert_allclose(u, exact, atol=1e-7)


@pytest.mark.parametrize("shape, spacing, axis", [((14, 11), (1.5, 0.5), 0), ((14, 11), (1.5, 0.5), 1),
                                                  ((9, 8, 10), (1.0, 2.0, 0.7), 2)])
def test_body_force_gives_the_analytic_parabolic_displacement(shape, spacing, axis):
    # u_axis = c x (n - 1 - x) along one axis: U'' = -2 c / h (mm^-1) and (lam + 2 mu) U'' + b = 0 gives the
    # constant body force b = 2 c (lam + 2 mu) / h along that axis; the other stress terms are divergence-free.
    ndim, c, lam, mu = len(shape), 0.05, 3.0, 1.5
    x = _grid(shape)[axis]
    exact = np.zeros((ndim,) + shape)
    exact[axis] = c * x * (shape[axis] - 1 - x)
    force = np.zeros_like(exact)
    force[axis] = 2 * c * (lam + 2 * mu) / spacing[axis]
    u = phantom.solve_elasticity(np.full(shape, lam), np.full(shape, mu), force, spacing, boundary=exact)
    np.testing.assert_allclose(u, exact, atol=1e-8)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.5, 1.25)])
def test_energy_of_an_affine_field_is_the_analytic_strain_energy(spacing):
    shape, lam, mu = (5, 6, 7), 3.0, 2.0
    h = np.asarray(spacing)
    matrix = np.array([[0.1, -0.2, 0.05], [0.3, 0.02, -0.1], [0.0, 0.15, -0.05]])
    u = np.einsum("ka,a...->k...", matrix, _grid(shape))
    stiffness = phantom.elasticity_operator(np.full(shape, lam), np.full(shape, mu), spacing)
    energy = 0.5 * u.ravel() @ (stiffness @ u.ravel())
    gradient = h[:, None] * matrix / h[None, :]  # dU_k / dX_a in physical units
    strain = 0.5 * (gradient + gradient.T)
    density = 0.5 * lam * np.trace(strain) ** 2 + mu * (strain ** 2).sum()
    volume = np.prod((np.array(shape) - 1) * h)
    assert energy == pytest.approx(density * volume, rel=1e-10)


def test_small_rigid_rotation_in_mm_costs_no_energy_with_anisotropic_spacing():
    shape, h = (7, 6, 5), np.array([2.0, 0.5, 1.25])
    omega = np.array([[0.0, 0.2, -0.1], [-0.2, 0.0, 0.3], [0.1, -0.3, 0.0]])  # antisymmetric in mm
    physical = np.einsum("ka,a...->k...", omega, _grid(shape) * h[:, None, None, None])
    u = physical / h[:, None, None, None]
    stiffness = phantom.elasticity_operator(np.full(shape, 5.0), np.full(shape, 3.0), tuple(h))
    assert abs(u.ravel() @ (stiffness @ u.ravel())) < 1e-10
    stretch = u.copy()
    stretch[0] += 0.01 * _grid(shape)[0]
    assert stretch.ravel() @ (stiffness @ stretch.ravel()) > 1e-3


def test_stiffer_inclusion_deforms_less():
    shape, spacing = (33, 33), (1.0, 1.0)
    x = _grid(shape)
    inclusion = ((x - 16) ** 2).sum(0) < 6 ** 2
    stretch = np.stack([0.1 * x[0], -0.03 * x[1]])  # uniaxial-ish stretch imposed on the border

    def mean_strain(factor):
        E = np.where(inclusion, 10.0 * factor, 10.0)
        lam, mu = phantom.lame_from_young(E, 0.3)
        u = phantom.solve_elasticity(lam, mu, np.zeros_like(stretch), spacing, boundary=stretch)
        grad = np.stack([np.stack(np.gradient(u[k]), 0) for k in range(2)])
        strain = 0.5 * (grad + grad.transpose(1, 0, 2, 3))
        return np.sqrt((strain ** 2).sum((0, 1)))[inclusion].mean()

    soft, same, stiff = mean_strain(0.2), mean_strain(1.0), mean_strain(20.0)
    assert soft > same > stiff
    assert stiff < 0.3 * same


def test_solver_rejects_bad_input():
    lam = np.ones((8, 8))
    with pytest.raises(ValueError, match="force"):
        phantom.solve_elasticity(lam, lam, np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="mu_map"):
        phantom.solve_elasticity(lam, -lam, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="spacing"):
        phantom.solve_elasticity(lam, lam, np.zeros((2, 8, 8)), spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="solver"):
        phantom.solve_elasticity(lam, lam, np.zeros((2, 8, 8)), solver="lu")


def test_inverse_of_a_smooth_field_is_consistent():
    shape = (40, 36)
    x = _grid(shape)
    u = np.stack([2.0 * np.sin(np.pi * x[1] / 35) * np.sin(np.pi * x[0] / 39),
                  -1.5 * np.sin(np.pi * x[0] / 39) ** 2 * np.sin(np.pi * x[1] / 35)])
    w = phantom.invert_displacement(u)
    error = phantom.inverse_consistency(u, w)
    assert error.max() < 0.02
    assert phantom.inverse_consistency(u, -u).max() > 0.1  # the naive inverse is measurably worse


# ---------------------------------------------------------------------------------------------------------------
# Subjects
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subject2d():
    return phantom.generate_subject(2, (64, 64), (2.0, 2.5), seed=11)


def test_generation_is_deterministic_per_seed():
    first = phantom.generate_subject(2, (32, 32), seed=3)
    again = phantom.generate_subject(2, (32, 32), seed=3)
    other = phantom.generate_subject(2, (32, 32), seed=4)
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, again[key]), key
    assert first["stiffness_factors"] == again["stiffness_factors"] and first["load"] == again["load"]
    assert not np.array_equal(first["fixed_labels"], other["fixed_labels"])
    assert not np.allclose(first["displacement"], other["displacement"])
    assert first["stiffness_factors"] != other["stiffness_factors"]


def test_subject_has_the_documented_arrays_classes_and_materials(subject2d):
    s = subject2d
    shape = (64, 64)
    for key in ("fixed", "moving", "fixed_clean", "moving_clean"):
        assert s[key].shape == shape and s[key].dtype == np.float32
    for key in ("fixed_labels", "moving_labels", "fixed_mask", "moving_mask"):
        assert s[key].shape == shape and s[key].dtype == np.uint8
    assert set(np.unique(s["fixed_labels"])) == set(range(5))
    assert np.array_equal(s["fixed_mask"], (s["fixed_labels"] > 0).astype(np.uint8))
    assert s["displacement"].shape == (2,) + shape
    # Intensities: air, lung and bone where they should be (noise-free image, away from partial volume).
    labels, image = s["fixed_labels"], s["fixed_clean"]
    assert image[0, 0] == pytest.approx(-1000.0, abs=1.0) or labels[0, 0] != 0
    assert np.median(image[labels == 2]) < -500 and np.median(image[labels == 3]) > 300
    assert abs(np.median(image[labels == 4]) - 60) < 40
    # Lung texture: vessels make the lung far from uniform.
    assert image[labels == 2].std() > 100
    # Stiffness ordering of the materials actually used.
    E = {name: m["E"] for name, m in s["materials"].items()}
    assert E["bone"] > E["liver"] > E["lung"] and E["soft_tissue"] > E["lung"] > E["background"]
    assert all(0.5 <= f <= 2.0 for f in s["stiffness_factors"].values())


def test_displacement_is_bounded_zero_on_the_border_and_fold_free(subject2d):
    u = subject2d["displacement"]
    norm = np.sqrt((u ** 2).sum(0))
    bound = phantom.default_max_displacement((64, 64))
    assert 0.6 * bound - 1e-9 <= norm.max() <= bound + 1e-9
    assert norm.max() == pytest.approx(subject2d["load"]["max_displacement_vox"])
    border = np.ones((64, 64), dtype=bool)
    border[1:-1, 1:-1] = False
    assert np.abs(u[:, border]).max() == 0.0
    assert subject2d["min_jacobian_det"] > 0.2


def test_lungs_strain_more_than_bone(subject2d):
    u, labels = subject2d["displacement"], subject2d["fixed_labels"]
    grad = np.stack([np.stack(np.gradient(u[k]), 0) for k in range(2)])
    strain = np.sqrt((0.5 * (grad + grad.transpose(1, 0, 2, 3)) ** 2).sum((0, 1)))
    assert strain[labels == 3].mean() < 0.5 * strain[labels == 2].mean()


def test_anatomy_and_motion_follow_the_documented_orientation(subject2d):
    # Axis 0 points to the patient's right, the last axis up: the liver sits under the right lung, the
    # diaphragm (lung-liver interface) exists, and on inspiration the liver moves down, the chest wall out and
    # the lungs gain volume.
    u, labels = subject2d["displacement"], subject2d["fixed_labels"]
    x = _grid(labels.shape)
    centre = (labels.shape[0] - 1) / 2
    assert x[0][labels == 4].mean() > centre
    lung, liver = labels == 2, labels == 4
    assert (lung[:, 1:] & liver[:, :-1]).sum() >= 5  # lung voxels right above liver voxels
    assert u[-1][liver].mean() < -0.3
    bone = labels == 3
    assert u[0][bone & (x[0] > centre)].mean() > 0.1 and u[0][bone & (x[0] < centre)].mean() < -0.1
    grad = np.stack([np.stack(np.gradient(u[k]), 0) for k in range(2)])
    jacobian = np.linalg.det(np.moveaxis(grad + np.eye(2)[:, :, None, None], (0, 1), (-2, -1)))
    assert jacobian[lung].mean() > 1.03


def test_moving_warped_by_u_matches_fixed(subject2d):
    s = subject2d
    u = torch.from_numpy(s["displacement"]).float()[None]
    labels = torch.from_numpy(s["moving_labels"].astype(np.int64))[None, None]
    warped_labels = warp(labels, u, mode="nearest")[0, 0].numpy()
    assert (warped_labels == s["fixed_labels"]).mean() >= 0.97
    warped = warp(torch.from_numpy(s["moving_clean"])[None, None], u)[0, 0].numpy()
    body = s["fixed_labels"] > 0
    registered = np.abs(warped - s["fixed_clean"])[body].mean()
    unregistered = np.abs(s["moving_clean"] - s["fixed_clean"])[body].mean()
    assert registered < 0.35 * unregistered
    # Noise is independent on the two images.
    assert np.std((s["fixed"] - s["fixed_clean"])) == pytest.approx(20.0, rel=0.1)
    assert np.corrcoef((s["fixed"] - s["fixed_clean"]).ravel(), (s["moving"] - s["moving_clean"]).ravel())[0, 1] < 0.1


def test_inverse_displacement_is_accurate_in_lungs_and_liver(subject2d):
    s = subject2d
    error = phantom.inverse_consistency(s["displacement"], s["inverse_displacement"])
    assert s["inverse_error"] == pytest.approx(error.max())
    assert s["inverse_error_lung_liver"] < 0.1
    assert s["inverse_error"] < 1.0


def test_keypoints_lie_in_lungs_and_liver_and_obey_p_plus_u(subject2d):
    s = subject2d
    p, q = s["fixed_keypoints"], s["moving_keypoints"]
    assert p.shape == q.shape == (60, 2)
    assert set(np.unique(s["fixed_labels"][tuple(np.round(p).astype(int).T)])) == {2, 4}
    assert (p >= 3 - 0.5).all() and (p <= 64 - 4 + 0.5).all()
    assert np.abs(p - np.round(p)).max() > 0  # sub-voxel
    u = torch.from_numpy(s["displacement"])
    np.testing.assert_allclose(q, p + sample_at_points(u, torch.from_numpy(p)).numpy(), atol=1e-12)
    # Independent route: the inverse field maps the moving keypoints back onto the fixed ones.
    w = torch.from_numpy(s["inverse_displacement"])
    back = q + sample_at_points(w, torch.from_numpy(q)).numpy()
    assert np.abs(back - p).max() < 0.1
    # The moving keypoints land in the same tissue of the moving labels.
    moving_class = s["moving_labels"][tuple(np.round(q).astype(int).T)]
    fixed_class = s["fixed_labels"][tuple(np.round(p).astype(int).T)]
    assert (moving_class == fixed_class).mean() >= 0.9


@pytest.fixture(scope="module")
def textures2d():
    return {texture: phantom.generate_subject(2, (64, 64), seed=1, texture=texture) for texture in phantom.TEXTURES}


def test_ct_texture_leaves_only_the_noise_in_the_liver_and_rich_about_doubles_it(textures2d):
    # Measured on the rendered (noisy) image, away from the organ boundary (partial volume).
    ratios = {}
    for texture, s in textures2d.items():
        core = ndi.binary_erosion(s["fixed_labels"] == 4, iterations=2)
        assert core.sum() > 100
        ratios[texture] = s["fixed"][core].std() / 20.0
    assert ratios["ct"] < 1.3
    assert 1.6 < ratios["rich"] < 3.0


def test_ct_texture_renders_the_published_intensities_and_keeps_the_subject(textures2d):
    ct, rich = textures2d["ct"], textures2d["rich"]
    labels, image = ct["fixed_labels"], ct["fixed_clean"]
    for cls, hu in ((1, phantom.HU_CT["soft_tissue"]), (4, phantom.HU_CT["liver"])):
        core = ndi.binary_erosion(labels == cls, iterations=2)
        assert np.mean(np.abs(image[core] - hu) < 1.0) > 0.95  # soft tissue holds the fat rim too
    bone = labels == 3
    marrow = ndi.binary_erosion(bone, border_value=1)
    assert marrow.any() and np.median(image[marrow]) < np.median(image[bone & ~marrow]) - 100
    assert image[labels == 2].std() > 100  # lung vessels remain
    # The regimes differ only in the images.
    for key in ("fixed_labels", "moving_labels", "displacement", "fixed_keypoints"):
        assert np.array_equal(ct[key], rich[key]), key
    assert ct["stiffness_factors"] == rich["stiffness_factors"]
    with pytest.raises(ValueError, match="texture"):
        phantom.generate_subject(2, (32, 32), texture="mri")


def _share_at_least_3_voxels_thick(mask):
    """Share of the voxels of ``mask`` that lie in a run of >= 3 mask voxels along every axis."""
    keep = mask.copy()
    for axis in range(mask.ndim):
        line = np.ones([3 if k == axis else 1 for k in range(mask.ndim)], dtype=bool)
        keep &= ndi.binary_opening(mask, structure=line)
    return keep.sum() / mask.sum()


def test_the_thickness_measure_counts_runs_along_every_axis():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:4, 1:5] = True  # 3 x 4: thick everywhere
    assert _share_at_least_3_voxels_thick(mask) == 1.0
    mask[5:7, 1:5] = True  # 2 x 4: thin
    assert _share_at_least_3_voxels_thick(mask) == pytest.approx(12 / 20)


@pytest.mark.parametrize("shape, spacing", [((64, 64), (2.0, 2.0)), ((32, 32, 32), (2.0, 2.0, 2.0)),
                                            ((48, 40, 48), (1.5, 2.0, 2.5))])
def test_bone_is_at_least_3_voxels_thick(shape, spacing):
    for seed in range(3):
        labels, _ = phantom.anatomy(shape, np.random.default_rng(seed), spacing)
        bone = labels == 3
        assert bone.sum() >= 60 and _share_at_least_3_voxels_thick(bone) >= 0.85, seed  # 0.0-0.36 before


def test_2d_128_subject_generates_quickly():
    start = time.perf_counter()
    s = phantom.generate_subject(2, (128, 128), seed=5)
    seconds = time.perf_counter() - start
    print(f"2D 128x128 subject: {seconds:.2f} s, inverse error {s['inverse_error']:.3f} "
          f"(lungs/liver {s['inverse_error_lung_liver']:.3f}) voxels")
    assert seconds < 30.0  # generous: the CI machine is shared; measured well under a second
    assert s["fixed"].shape == (128, 128)


def test_3d_subject_has_all_classes_and_consistent_ground_truth():
    s = phantom.generate_subject(3, (24, 22, 26), (1.5, 2.0, 2.5), seed=2, keypoints=50)
    assert s["fixed"].shape == (24, 22, 26) and s["displacement"].shape == (3, 24, 22, 26)
    assert set(np.unique(s["fixed_labels"])) == set(range(5))
    assert s["fixed_keypoints"].shape == (50, 3)
    assert s["min_jacobian_det"] > 0 and s["inverse_error_lung_liver"] < 0.2
    u = torch.from_numpy(s["displacement"]).float()[None]
    warped = warp(torch.from_numpy(s["moving_labels"].astype(np.int64))[None, None], u, mode="nearest")
    assert (warped[0, 0].numpy() == s["fixed_labels"]).mean() >= 0.97


def test_generate_subject_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ndim"):
        phantom.generate_subject(4)
    with pytest.raises(ValueError, match="shape"):
        phantom.generate_subject(2, (8, 32))
    with pytest.raises(ValueError, match="spacing"):
        phantom.generate_subject(2, (32, 32), (1.0, -1.0))
    with pytest.raises(ValueError, match="max_displacement"):
        phantom.generate_subject(2, (32, 32), max_displacement=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Dataset and CLI
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subjects, val, test, expected", [
    (10, None, None, (8, 1, 1)), (20, None, None, (16, 2, 2)), (15, None, None, (12, 1, 2)),
    (3, None, None, (1, 1, 1)), (2, None, None, (2, 0, 0)), (1, None, None, (1, 0, 0)),
    (10, 3, 0, (7, 3, 0)), (5, 2, 2, (1, 2, 2)),
])
def test_split_sizes(subjects, val, test, expected):
    assert phantom.split_sizes(subjects, val, test) == expected


def test_split_sizes_rejects_splits_without_training_subjects():
    with pytest.raises(ValueError, match="val"):
        phantom.split_sizes(3, 2, 1)


def _written_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_dataset_writes_the_exact_layout(tmp_path):
    root = tmp_path / "data"
    spacing = (2.0, 1.5)
    phantom.write_dataset(root, ndim=2, subjects=4, shape=(32, 40), spacing=spacing, seed=7, val=1, test=1,
                          progress=False)
    cases = ["0001", "0002", "0003", "0004"]
    expected = ["PHANTOM_dataset.json", "phantom_config.json"]
    for case in cases:
        expected.append(f"groundtruthTr/disp_{case}_{case}.nii.gz")
        for index in ("0000", "0001"):
            expected += [f"imagesTr/PHANTOM_{case}_{index}.nii.gz", f"masksTr/PHANTOM_{case}_{index}.nii.gz",
                         f"labelsTr/PHANTOM_{case}_{index}.nii.gz", f"keypointsTr/PHANTOM_{case}_{index}.csv"]
    assert _written_files(root) == sorted(expected)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left behind

    meta = json.loads((root / "PHANTOM_dataset.json").read_text())
    for key in ("name", "ndim", "tensorImageShape", "spacing", "labels", "modality", "numTraining",
                "training_paired_images", "registration_val", "registration_test", "materials", "subjects",
                "seed", "generator_version"):
        assert key in meta, key
    assert meta["name"] == "phantom" and meta["ndim"] == 2 and meta["seed"] == 7
    assert meta["tensorImageShape"] == {"0": [32, 40]} and meta["spacing"] == [2.0, 1.5]
    assert meta["labels"] == {"0": "background", "1": "soft_tissue", "2": "lung", "3": "bone", "4": "liver"}
    assert meta["modality"] == {"0": "CT"}
    pair = lambda c: {"fixed": f"./imagesTr/PHANTOM_{c}_0000.nii.gz", "moving": f"./imagesTr/PHANTOM_{c}_0001.nii.gz"}
    assert meta["training_paired_images"] == [pair("0001"), pair("0002")]
    assert meta["registration_val"] == [pair("0003")] and meta["registration_test"] == [pair("0004")]
    assert meta["numTraining"] == 2
    assert set(meta["materials"]) == set(phantom.CLASS_NAMES)
    lam, mu = phantom.lame_from_young(**phantom.TISSUES["liver"])
    assert meta["materials"]["liver"]["lam"] == pytest.approx(lam)
    assert meta["materials"]["liver"]["mu"] == pytest.approx(mu)
    assert set(meta["subjects"]) == set(cases)
    assert {"stiffness_factors", "load"} <= set(meta["subjects"]["0001"])
    config = json.loads((root / "phantom_config.json").read_text())
    assert config["subjects"] == 4 and config["shape"] == [32, 40] and config["seed"] == 7

    affine = np.array([[2.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])  # coronal: right, superior
    assert nib.aff2axcodes(affine) == ("R", "S", "P")
    for folder, dtype in (("imagesTr", np.float32), ("masksTr", np.uint8), ("labelsTr", np.uint8)):
        image = nib.load(root / folder / "PHANTOM_0002_0001.nii.gz")
        assert image.shape == (32, 40, 1) and image.get_data_dtype() == dtype  # one slice of a 3D volume
        np.testing.assert_allclose(image.affine, affine)
        assert image.header.get_zooms() == (2.0, 1.5, 1.0)
    labels = np.asarray(nib.load(root / "labelsTr" / "PHANTOM_0002_0000.nii.gz").dataobj)
    mask = np.asarray(nib.load(root / "masksTr" / "PHANTOM_0002_0000.nii.gz").dataobj)
    assert labels.max() == 4 and np.array_equal(mask, (labels > 0).astype(np.uint8))
    truth = nib.load(root / "groundtruthTr" / "disp_0002_0002.nii.gz")
    assert truth.shape == (32, 40, 1, 2) and truth.get_data_dtype() == np.float32
    np.testing.assert_allclose(truth.affine, affine)
    fixed_points = np.loadtxt(root / "keypointsTr" / "PHANTOM_0002_0000.csv", delimiter=",")
    moving_points = np.loadtxt(root / "keypointsTr" / "PHANTOM_0002_0001.csv", delimiter=",")
    assert fixed_points.shape == moving_points.shape == (60, 2)
    # The files hold subject (seed, case number) of generate_subject, with u stored as [*S, ndim].
    subject = phantom.generate_subject(2, (32, 40), spacing, np.random.default_rng([7, 2]))
    np.testing.assert_allclose(np.asarray(truth.dataobj)[:, :, 0], np.moveaxis(subject["displacement"], 0, -1),
                               atol=1e-6)
    np.testing.assert_allclose(moving_points, subject["moving_keypoints"], atol=1e-5)
    assert meta["subjects"]["0002"]["stiffness_factors"] == subject["stiffness_factors"]


@pytest.mark.parametrize("ndim, shape, spacing", [(2, (32, 40), (2.0, 1.5)), (3, (16, 18, 20), (1.0, 1.5, 2.0))])
def test_itk_reads_every_file_and_the_dataset_returns_the_generated_subject(tmp_path, ndim, shape, spacing):
    sitk = pytest.importorskip("SimpleITK")
    from hypermorph_spatially_adaptive.data import PhantomDataset, window_ct

    root = phantom.write_dataset(tmp_path / "d", ndim=ndim, subjects=1, shape=shape, spacing=spacing, seed=3,
                                 keypoints=20, progress=False)
    files = sorted(root.rglob("*.nii.gz"))
    assert len(files) == 7
    for path in files:
        image = sitk.ReadImage(str(path))  # ITK refused the former 2D files: "determinant is 0"
        assert image.GetSize()[:ndim] == shape and abs(np.linalg.det(
            np.reshape(image.GetDirection(), (image.GetDimension(),) * 2))) == pytest.approx(1.0)
        np.testing.assert_allclose(image.GetSpacing()[:ndim], spacing)
    item = PhantomDataset(root, "train")[0]
    subject = phantom.generate_subject(ndim, shape, spacing, np.random.default_rng([3, 1]), keypoints=20)
    np.testing.assert_allclose(item["spacing"], spacing)
    np.testing.assert_allclose(np.asarray(item["fixed"])[0], window_ct(subject["fixed"]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(item["moving_labels"])[0], subject["moving_labels"])
    np.testing.assert_allclose(np.asarray(item["gt_displacement"]), subject["displacement"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(item["fixed_keypoints"]), subject["fixed_keypoints"], atol=1e-5)


def test_write_dataset_3d_shapes(tmp_path):
    root = phantom.write_dataset(tmp_path / "d3", ndim=3, subjects=1, shape=(16, 18, 20), spacing=(1.0, 1.5, 2.0),
                                 keypoints=20, progress=False)
    image = nib.load(root / "imagesTr" / "PHANTOM_0001_0000.nii.gz")
    assert image.shape == (16, 18, 20) and image.header.get_zooms() == (1.0, 1.5, 2.0)
    truth = nib.load(root / "groundtruthTr" / "disp_0001_0001.nii.gz")
    assert truth.shape == (16, 18, 20, 3)
    assert np.loadtxt(root / "keypointsTr" / "PHANTOM_0001_0001.csv", delimiter=",").shape == (20, 3)
    meta = json.loads((root / "PHANTOM_dataset.json").read_text())
    assert len(meta["training_paired_images"]) == 1 and meta["registration_val"] == meta["registration_test"] == []


def test_write_dataset_refuses_a_non_empty_out_unless_overwrite(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        phantom.write_dataset(root, subjects=1, shape=(16, 16), progress=False)
    assert _written_files(root) == ["keep.txt"]
    phantom.write_dataset(root, subjects=1, shape=(16, 16), overwrite=True, progress=False)
    assert "keep.txt" not in _written_files(root) and (root / "PHANTOM_dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        phantom.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--ndim", "--subjects", "--size", "--spacing", "--seed", "--val", "--test",
                 "--max-displacement", "--overwrite"):
        assert flag in text


def test_cli_main_writes_a_dataset(tmp_path):
    root = tmp_path / "cli"
    code = phantom.main(["--out", str(root), "--ndim", "2", "--subjects", "3", "--size", "32", "--spacing", "2.5",
                         "--seed", "4", "--max-displacement", "1.5", "--quiet"])
    assert code == 0
    meta = json.loads((root / "PHANTOM_dataset.json").read_text())
    assert meta["tensorImageShape"] == {"0": [32, 32]} and meta["spacing"] == [2.5, 2.5]
    assert (len(meta["training_paired_images"]), len(meta["registration_val"]), len(meta["registration_test"])) \
        == (1, 1, 1)
    assert all(s["load"]["max_displacement_vox"] <= 1.5 for s in meta["subjects"].values())
    config = json.loads((root / "phantom_config.json").read_text())
    assert config["max_displacement"] == 1.5 and "--subjects" in config["command"]
    assert config["texture"] == "rich" and meta["texture"] == "rich"


def test_cli_texture_is_recorded(tmp_path):
    root = tmp_path / "ct"
    assert phantom.main(["--out", str(root), "--subjects", "1", "--size", "24", "--texture", "ct", "--quiet"]) == 0
    config = json.loads((root / "phantom_config.json").read_text())
    assert config["texture"] == "ct" and config["hu"] == phantom.HU_CT


@pytest.mark.parametrize("argv, message", [
    (["--size", "8"], "shape"),
    (["--size", "32", "32", "32"], "shape"),
    (["--spacing", "0"], "spacing"),
    (["--subjects", "3", "--val", "2", "--test", "1"], "val"),
    (["--max-displacement", "-1"], "--max-displacement"),
    (["--texture", "mri"], "--texture"),
])
def test_cli_rejects_bad_arguments_before_any_work(tmp_path, capsys, argv, message):
    root = tmp_path / "bad"
    with pytest.raises(SystemExit) as exit_info:
        phantom.main(["--out", str(root)] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_cli_refuses_a_non_empty_out(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit):
        phantom.main(["--out", str(tmp_path), "--size", "16"])
    assert "not empty" in capsys.readouterr().err
