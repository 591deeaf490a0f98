import math

import pytest
import torch

from hypermorph_spatially_adaptive.core import regularizers
from hypermorph_spatially_adaptive.core.transform import identity_grid
from hypermorph_spatially_adaptive.core.regularizers import (
    DiffusionRegularizer,
    ElasticRegularizer,
    class_map,
    diffusion_energy,
    elastic_energy,
    elastic_energy_reference,
    forward_difference,
    lame_maps,
)


def _diffusion_reference(velocity, weight, spacing):
    """Per-voxel ``weight * sum_a sum_k (d_a v_k)^2`` ``[B, 1, *S]``, written term by term (the test oracle)."""
    ndim = velocity.dim() - 2
    spacing = spacing if spacing is not None else (1.0,) * ndim
    total = 0
    for a in range(ndim):
        for k in range(ndim):
            component = velocity[:, k:k + 1]
            diff = torch.cat([torch.diff(component, dim=2 + a), torch.zeros_like(component.narrow(2 + a, 0, 1))],
                             dim=2 + a)
            total = total + (diff * spacing[k] / spacing[a]) ** 2
    return weight * total

SHAPES = {2: (6, 7), 3: (4, 5, 6)}
# (ndim, spacing): isotropic voxels and strongly anisotropic mm spacing in 2D and 3D.
GEOMETRIES = [(2, None), (2, (0.7, 1.9)), (3, None), (3, (0.8, 1.5, 2.5))]
GEOMETRY_IDS = ["2d", "2d-aniso", "3d", "3d-aniso"]


def _spacing(ndim, spacing):
    return torch.tensor(spacing if spacing is not None else (1.0,) * ndim, dtype=torch.float64)


def _linear_field(matrix, shape, batch=1):
    """u_k(x) = sum_a A[k, a] x_a in voxels, ``[batch, ndim, *shape]`` float64."""
    grid = identity_grid(shape, dtype=torch.float64)
    field = torch.einsum("ka,ba...->bk...", matrix, grid)
    return field.expand(batch, *field.shape[1:]).clone()


def _physical(matrix, spacing):
    """A_phys[k, a] = spacing_k * A[k, a] / spacing_a (du_k/dx_a in mm per mm)."""
    return spacing[:, None] * matrix / spacing[None, :]


def _elastic_closed_form(a_phys, lam, mu):
    strain = (a_phys + a_phys.T) / 2
    return lam / 2 * torch.trace(a_phys) ** 2 + mu * (strain ** 2).sum()


def _interior(values):
    """Drop the last index of every spatial axis of a map ``[B, 1, *S]``."""
    return values[(slice(None), slice(None)) + (slice(0, -1),) * (values.dim() - 2)]


# --- closed forms --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_linear_field_has_closed_form_elastic_energy_in_interior(ndim, spacing):
    torch.manual_seed(0)
    matrix = torch.randn(ndim, ndim, dtype=torch.float64)  # non-symmetric: catches component/axis mix-ups
    field = _linear_field(matrix, SHAPES[ndim], batch=2)
    lam, mu = 0.7, 0.3
    a_phys = _physical(matrix, _spacing(ndim, spacing))
    expected = _elastic_closed_form(a_phys, lam, mu)
    energy = elastic_energy(field, lam, mu, spacing, reduction="none")
    assert energy.shape == (2, 1, *SHAPES[ndim])
    interior = _interior(energy)
    torch.testing.assert_close(interior, torch.full_like(interior, expected.item()), rtol=1e-12, atol=1e-12)
    # Mis-paired derivatives would give other values, so the check above can fail: derivative axes taken in
    # reversed order (x, y, z against i, j, k) and, with anisotropic spacing, the transposed spacing ratio.
    reversed_axes = _elastic_closed_form(_physical(matrix.flip(1), _spacing(ndim, spacing)), lam, mu)
    assert not math.isclose(reversed_axes.item(), expected.item(), rel_tol=1e-6)
    if spacing is not None:
        transposed = _elastic_closed_form(_physical(matrix.T, _spacing(ndim, spacing)), lam, mu)
        assert not math.isclose(transposed.item(), expected.item(), rel_tol=1e-6)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_far_face_drops_derivatives_along_its_axis(ndim, spacing):
    torch.manual_seed(1)
    matrix = torch.randn(ndim, ndim, dtype=torch.float64)
    shape = SHAPES[ndim]
    field = _linear_field(matrix, shape)
    energy = elastic_energy(field, 0.6, 0.4, spacing, reduction="none")
    a_phys = _physical(matrix, _spacing(ndim, spacing))
    for axis in range(ndim):
        # Voxels at the last index of `axis`, interior along the others: d_axis u = 0 there.
        index = [slice(None), 0] + [slice(0, -1)] * ndim
        index[2 + axis] = shape[axis] - 1
        truncated = a_phys.clone()
        truncated[:, axis] = 0.0
        face = energy[tuple(index)]
        expected = _elastic_closed_form(truncated, 0.6, 0.4).item()
        torch.testing.assert_close(face, torch.full_like(face, expected), rtol=1e-12, atol=1e-12)
    corner = energy[(0, 0) + tuple(n - 1 for n in shape)]
    assert corner.item() == 0.0


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_infinitesimal_rotation_has_no_elastic_energy(ndim, spacing):
    torch.manual_seed(2)
    s = _spacing(ndim, spacing)
    skew = torch.randn(ndim, ndim, dtype=torch.float64)
    skew = skew - skew.T  # antisymmetric in mm: a rotation of the physical body
    matrix = skew * s[None, :] / s[:, None]  # back to voxel units, A[k, a] = A_phys[k, a] s_a / s_k
    field = _linear_field(matrix, SHAPES[ndim])
    mu_only = _interior(elastic_energy(field, 0.0, 1.0, spacing, reduction="none"))
    lam_only = _interior(elastic_energy(field, 1.0, 0.0, spacing, reduction="none"))
    assert mu_only.abs().max().item() < 1e-12
    assert lam_only.abs().max().item() < 1e-12
    # ...whereas the same field is not free for the diffusion regularizer.
    assert _interior(diffusion_energy(field, 1.0, spacing, reduction="none")).min().item() > 1e-3


@pytest.mark.parametrize("ndim, spacing, axis", [(n, s, a) for n, s in GEOMETRIES for a in range(n)])
def test_stretch_along_each_axis_has_lambda_and_mu_terms(ndim, spacing, axis):
    stretch = 0.37
    matrix = torch.zeros(ndim, ndim, dtype=torch.float64)
    matrix[axis, axis] = stretch  # u_axis = s * x_axis, a diagonal entry: spacing cancels
    field = _linear_field(matrix, SHAPES[ndim])
    lam_term = _interior(elastic_energy(field, 1.0, 0.0, spacing, reduction="none"))
    mu_term = _interior(elastic_energy(field, 0.0, 1.0, spacing, reduction="none"))
    torch.testing.assert_close(lam_term, torch.full_like(lam_term, stretch ** 2 / 2), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mu_term, torch.full_like(mu_term, stretch ** 2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ndim, spacing, component, axis",
                         [(n, s, k, a) for n, s in GEOMETRIES for k in range(n) for a in range(n) if k != a])
def test_shear_pairs_component_with_its_derivative_axis(ndim, spacing, component, axis):
    # u_component = x_axis: the only derivative is d_axis u_component = spacing_component / spacing_axis.
    matrix = torch.zeros(ndim, ndim, dtype=torch.float64)
    matrix[component, axis] = 1.0
    field = _linear_field(matrix, SHAPES[ndim])
    s = _spacing(ndim, spacing)
    gradient = (s[component] / s[axis]).item()
    lam_term = _interior(elastic_energy(field, 1.0, 0.0, spacing, reduction="none"))
    mu_term = _interior(elastic_energy(field, 0.0, 1.0, spacing, reduction="none"))
    assert lam_term.abs().max().item() < 1e-14  # no divergence: d_k u_k = 0 for every k
    # ||eps||_F^2 = 2 * (gradient / 2)^2
    torch.testing.assert_close(mu_term, torch.full_like(mu_term, gradient ** 2 / 2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_linear_field_has_closed_form_diffusion_energy_in_interior(ndim, spacing):
    torch.manual_seed(3)
    matrix = torch.randn(ndim, ndim, dtype=torch.float64)
    field = _linear_field(matrix, SHAPES[ndim])
    weight = 0.8
    expected = weight * (_physical(matrix, _spacing(ndim, spacing)) ** 2).sum().item()
    interior = _interior(diffusion_energy(field, weight, spacing, reduction="none"))
    torch.testing.assert_close(interior, torch.full_like(interior, expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_constant_field_has_zero_energy(ndim, spacing, reduction):
    field = torch.full((2, ndim, *SHAPES[ndim]), 3.25)
    field[1] = -1.5
    for energy in (elastic_energy(field, 0.5, 0.5, spacing, reduction),
                   diffusion_energy(field, 0.5, spacing, reduction)):
        assert torch.count_nonzero(energy).item() == 0


# --- parameter forms and reductions ----------------------------------------------------------------------------

@pytest.mark.parametrize("ndim", [2, 3])
def test_constant_voxelwise_map_and_per_sample_tensor_equal_the_global_value(ndim):
    torch.manual_seed(4)
    shape = SHAPES[ndim]
    field = torch.randn(2, ndim, *shape, dtype=torch.float64)
    lam, mu = 0.35, 0.55
    expected = elastic_energy(field, lam, mu, reduction="none")
    lam_map = torch.full((2, 1, *shape), lam, dtype=torch.float64)
    mu_map = torch.full((2, 1, *shape), mu, dtype=torch.float64)
    torch.testing.assert_close(elastic_energy(field, lam_map, mu_map, reduction="none"), expected)
    torch.testing.assert_close(elastic_energy(field, torch.tensor([lam, lam]), torch.tensor([mu, mu]),
                                              reduction="none"), expected)
    torch.testing.assert_close(diffusion_energy(field, lam_map, reduction="none"),
                               diffusion_energy(field, lam, reduction="none"))


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_per_sample_parameters_apply_to_their_own_sample(ndim, spacing):
    torch.manual_seed(5)
    field = torch.randn(3, ndim, *SHAPES[ndim], dtype=torch.float64)
    lam = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    mu = torch.tensor([0.3, 0.0, 0.7], dtype=torch.float64)
    elastic = elastic_energy(field, lam, mu, spacing, reduction="none")
    diffusion = diffusion_energy(field, mu, spacing, reduction="none")
    for b in range(3):
        alone = elastic_energy(field[b:b + 1], lam[b].item(), mu[b].item(), spacing, reduction="none")
        torch.testing.assert_close(elastic[b:b + 1], alone)
        torch.testing.assert_close(diffusion[b:b + 1],
                                   diffusion_energy(field[b:b + 1], mu[b].item(), spacing, reduction="none"))
    assert not torch.allclose(elastic[0], elastic_energy(field[:1], lam[1].item(), mu[1].item(), spacing,
                                                         reduction="none")[0])


@pytest.mark.parametrize("ndim", [2, 3])
def test_mean_and_sum_reduce_the_whole_map_border_included(ndim):
    torch.manual_seed(6)
    field = torch.randn(2, ndim, *SHAPES[ndim], dtype=torch.float64)
    for energy, args in ((elastic_energy, (0.4, 0.6)), (diffusion_energy, (0.7,))):
        values = energy(field, *args, reduction="none")
        torch.testing.assert_close(energy(field, *args), values.sum() / values.numel())
        torch.testing.assert_close(energy(field, *args, reduction="sum"), values.sum())


def test_voxelwise_maps_weight_each_voxel():
    torch.manual_seed(7)
    field = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    lam_map = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    mu_map = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    lam_part = elastic_energy(field, 1.0, 0.0, reduction="none")
    mu_part = elastic_energy(field, 0.0, 1.0, reduction="none")
    torch.testing.assert_close(elastic_energy(field, lam_map, mu_map, reduction="none"),
                               lam_map * lam_part + mu_map * mu_part)


# --- reference implementation and gradients --------------------------------------------------------------------

def _parameter(form, batch, shape, seed):
    generator = torch.Generator().manual_seed(seed)
    if form == "float":
        return 0.2 + 0.6 * torch.rand((), generator=generator, dtype=torch.float64).item()
    if form == "per-sample":
        return torch.rand(batch, generator=generator, dtype=torch.float64)
    return torch.rand(batch, 1, *shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("form", ["float", "per-sample", "voxelwise"])
def test_fast_elastic_energy_matches_straightforward_reference(ndim, spacing, form):
    torch.manual_seed(8)
    shape = (13, 11) if ndim == 2 else (7, 6, 9)
    field = torch.randn(2, ndim, *shape, dtype=torch.float64, requires_grad=True)
    lam, mu = _parameter(form, 2, shape, 1), _parameter(form, 2, shape, 2)
    fast = elastic_energy(field, lam, mu, spacing, reduction="none")
    reference = elastic_energy_reference(field, lam, mu, spacing, reduction="none")
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    weights = torch.rand_like(fast)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), field)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), field)
    torch.testing.assert_close(grad_fast, grad_reference, rtol=1e-12, atol=1e-12)
    # Reduced outputs hand the backward a broadcast gradient (a separate code path).
    for reduction in ("sum", "mean"):
        (grad_fast,) = torch.autograd.grad(elastic_energy(field, lam, mu, spacing, reduction), field)
        (grad_reference,) = torch.autograd.grad(elastic_energy_reference(field, lam, mu, spacing, reduction),
                                                field)
        torch.testing.assert_close(grad_fast, grad_reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (2, 1, 3), (1, 1, 4)])
def test_fast_elastic_energy_matches_reference_on_thin_grids(shape):
    # Axes of length 1 and 2 exercise the border handling of the differences and of their adjoints.
    torch.manual_seed(15)
    field = torch.randn(2, len(shape), *shape, dtype=torch.float64, requires_grad=True)
    spacing = (0.8, 1.5, 2.5)[:len(shape)]
    fast = elastic_energy(field, 0.4, 0.9, spacing, reduction="none")
    reference = elastic_energy_reference(field, 0.4, 0.9, spacing, reduction="none")
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    weights = torch.rand_like(fast)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), field)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), field)
    torch.testing.assert_close(grad_fast, grad_reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_fast_diffusion_energy_matches_straightforward_reference(ndim, spacing):
    torch.manual_seed(9)
    shape = (13, 11) if ndim == 2 else (7, 6, 9)
    field = torch.randn(2, ndim, *shape, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(2, 1, *shape, dtype=torch.float64)
    fast = diffusion_energy(field, weight, spacing, reduction="none")
    reference = _diffusion_reference(field, weight, spacing)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    (grad_fast,) = torch.autograd.grad(fast.sum(), field)
    (grad_reference,) = torch.autograd.grad(reference.sum(), field)
    torch.testing.assert_close(grad_fast, grad_reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_elastic_energy_gradients_pass_gradcheck(ndim, spacing):
    torch.manual_seed(10)
    shape = (4, 5) if ndim == 2 else (3, 4, 3)
    field = torch.randn(2, ndim, *shape, dtype=torch.float64, requires_grad=True)
    lam_map = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    mu_map = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, lam, mu: elastic_energy(v, lam, mu, spacing, reduction="none"), (field, lam_map, mu_map))
    lam = torch.rand(2, dtype=torch.float64, requires_grad=True)  # broadcast over voxels
    assert torch.autograd.gradcheck(lambda v, lam: elastic_energy(v, lam, 0.3, spacing), (field, lam))
    # Parameters alone (a velocity that needs no gradient takes a separate path in the backward).
    assert torch.autograd.gradcheck(
        lambda lam, mu: elastic_energy(field.detach(), lam, mu, spacing, reduction="sum"), (lam_map, mu_map))


def test_elastic_energy_refuses_second_derivatives_rather_than_returning_zeros():
    field = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(elastic_energy(field, 0.4, 0.6), field, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), field)


@pytest.mark.parametrize("ndim, spacing", GEOMETRIES, ids=GEOMETRY_IDS)
def test_diffusion_energy_gradients_pass_gradcheck(ndim, spacing):
    torch.manual_seed(11)
    shape = (4, 5) if ndim == 2 else (3, 4, 3)
    field = torch.randn(2, ndim, *shape, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, w: diffusion_energy(v, w, spacing, reduction="none"), (field, weight))


def test_forward_difference_hand_values_and_zero_border():
    x = torch.tensor([[1.0, 4.0, 9.0, 16.0], [2.0, 2.0, 5.0, 1.0]])
    torch.testing.assert_close(forward_difference(x, 1), torch.tensor([[3.0, 5.0, 7.0, 0.0], [0.0, 3.0, -4.0, 0.0]]))
    torch.testing.assert_close(forward_difference(x, 0), torch.tensor([[1.0, -2.0, -4.0, -15.0], [0.0] * 4]))
    torch.testing.assert_close(forward_difference(x, -1), forward_difference(x, 1))


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_forward_difference_gradients_to_second_order(size):
    torch.manual_seed(12)
    x = torch.randn(2, size, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: forward_difference(t, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: forward_difference(t, 1) ** 3, (x,))


# --- lame_maps ---------------------------------------------------------------------------------------------------

def test_lame_maps_put_class_values_where_the_labels_are():
    labels = torch.tensor([[[[0, 1, 2], [2, 1, 0]]]])
    lam = torch.tensor([0.1, 0.2, 0.3])
    mu = torch.tensor([0.5, 0.0, 0.25])
    lam_map, mu_map = lame_maps(labels, lam, mu)
    assert lam_map.shape == mu_map.shape == (1, 1, 2, 3)
    torch.testing.assert_close(lam_map, torch.tensor([[[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]]]))
    torch.testing.assert_close(mu_map, torch.tensor([[[[0.5, 0.0, 0.25], [0.25, 0.0, 0.5]]]]))


def test_lame_maps_use_each_samples_own_class_values_in_3d():
    labels = torch.zeros(2, 1, 2, 2, 2, dtype=torch.int64)
    labels[0, 0, 1, 0, 1] = 1
    labels[1, 0, :, 1] = 2
    lam = torch.tensor([[0.0, 0.5, 0.9], [0.2, 0.4, 0.8]])
    mu = torch.tensor([[0.1, 0.3, 0.05], [0.6, 0.1, 0.15]])
    lam_map, mu_map = lame_maps(labels, lam, mu)
    for b in range(2):
        for index in torch.cartesian_prod(*(torch.arange(2),) * 3).tolist():
            label = labels[(b, 0, *index)].item()
            assert lam_map[(b, 0, *index)].item() == lam[b, label].item()
            assert mu_map[(b, 0, *index)].item() == mu[b, label].item()


def test_lame_maps_gradient_counts_voxels_per_class():
    labels = torch.tensor([[[[0, 1, 1], [2, 1, 0]]], [[[2, 2, 2], [2, 2, 1]]]])
    lam = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    mu = torch.rand(3, dtype=torch.float64, requires_grad=True)
    lam_map, mu_map = lame_maps(labels, lam, mu)
    (lam_map.sum() + mu_map.sum()).backward()
    torch.testing.assert_close(lam.grad, torch.tensor([[2.0, 3.0, 1.0], [0.0, 1.0, 5.0]], dtype=torch.float64))
    torch.testing.assert_close(mu.grad, torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))


def test_elastic_energy_with_lame_maps_uses_each_class_parameters():
    torch.manual_seed(13)
    labels = torch.randint(0, 3, (1, 1, 6, 7))
    field = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    mu = torch.tensor([0.8, 0.2, 0.5], dtype=torch.float64)
    energy = elastic_energy(field, *lame_maps(labels, lam, mu), reduction="none")
    for c in range(3):
        per_class = elastic_energy(field, lam[c].item(), mu[c].item(), reduction="none")
        mask = labels == c
        torch.testing.assert_close(energy[mask], per_class[mask])


# --- validation ----------------------------------------------------------------------------------------------------

_V2 = torch.zeros(2, 2, 5, 6)
_MAP2 = torch.ones(2, 1, 5, 6)


def _with(value, index, tensor=_V2):
    out = tensor.clone()
    out[index] = value
    return out


ENERGY_BAD_INPUTS = [
    ("1d-field", lambda: elastic_energy(torch.zeros(2, 1, 5), 1.0, 1.0), "velocity"),
    ("channels", lambda: elastic_energy(torch.zeros(2, 3, 5, 6), 1.0, 1.0), "velocity"),
    ("not-a-tensor", lambda: elastic_energy([[0.0]], 1.0, 1.0), "velocity"),
    ("nan-field", lambda: elastic_energy(_with(float("nan"), (0, 1, 2, 3)), 1.0, 1.0), "velocity"),
    ("inf-field", lambda: elastic_energy(_with(float("inf"), (1, 0, 0, 0)), 1.0, 1.0), "velocity"),
    ("negative-lam", lambda: elastic_energy(_V2, -0.1, 1.0), "lam"),
    ("nan-mu", lambda: elastic_energy(_V2, 0.1, float("nan")), "mu"),
    ("negative-lam-map", lambda: elastic_energy(_V2, _with(-1.0, (1, 0, 4, 5), _MAP2), 1.0), "lam"),
    ("nan-mu-map", lambda: elastic_energy(_V2, 1.0, _with(float("nan"), (0, 0, 0, 0), _MAP2)), "mu"),
    ("mu-map-shape", lambda: elastic_energy(_V2, 1.0, torch.ones(2, 1, 5, 5)), "mu"),
    ("lam-map-channels", lambda: elastic_energy(_V2, torch.ones(2, 2, 5, 6), 1.0), "lam"),
    ("lam-batch", lambda: elastic_energy(_V2, torch.ones(3), 1.0), "lam"),
    ("spacing-length", lambda: elastic_energy(_V2, 1.0, 1.0, spacing=(1.0, 1.0, 1.0)), "spacing"),
    ("spacing-negative", lambda: elastic_energy(_V2, 1.0, 1.0, spacing=(1.0, -2.0)), "spacing"),
    ("reduction", lambda: elastic_energy(_V2, 1.0, 1.0, reduction="avg"), "reduction"),
    ("diffusion-field", lambda: diffusion_energy(torch.zeros(2, 2, 4, 4, 4), 1.0), "velocity"),
    ("diffusion-weight", lambda: diffusion_energy(_V2, -1.0), "weight"),
    ("diffusion-weight-map", lambda: diffusion_energy(_V2, torch.ones(2, 1, 6, 5)), "weight"),
    ("diffusion-spacing", lambda: diffusion_energy(_V2, 1.0, spacing=(0.0, 1.0)), "spacing"),
    ("diffusion-reduction", lambda: diffusion_energy(_V2, 1.0, reduction=None), "reduction"),
    ("difference-dim", lambda: forward_difference(_V2, 4), "dim"),
]


@pytest.mark.parametrize("call, match", [(c, m) for _, c, m in ENERGY_BAD_INPUTS],
                         ids=[name for name, _, _ in ENERGY_BAD_INPUTS])
def test_energy_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


_LABELS = torch.tensor([[[[0, 1], [2, 1]]]])
_CLASS = torch.tensor([0.1, 0.2, 0.3])

LAME_BAD_INPUTS = [
    ("float-labels", lambda: lame_maps(_LABELS.float(), _CLASS, _CLASS), "labels"),
    ("bool-labels", lambda: lame_maps(_LABELS > 0, _CLASS, _CLASS), "labels"),
    ("labels-channels", lambda: lame_maps(_LABELS.expand(1, 2, 2, 2), _CLASS, _CLASS), "labels"),
    ("label-too-large", lambda: lame_maps(_LABELS + 1, _CLASS, _CLASS), "labels"),
    ("label-negative", lambda: lame_maps(_LABELS - 1, _CLASS, _CLASS), "labels"),
    ("lam-integer", lambda: lame_maps(_LABELS, torch.tensor([1, 2, 3]), _CLASS), "lam"),
    ("lam-batch", lambda: lame_maps(_LABELS, _CLASS.expand(2, 3), _CLASS), "lam"),
    ("lam-3d", lambda: lame_maps(_LABELS, _CLASS.view(1, 1, 3), _CLASS), "lam"),
    ("mu-classes", lambda: lame_maps(_LABELS, _CLASS, torch.tensor([0.1, 0.2, 0.3, 0.4])), "mu"),
    ("lam-negative", lambda: lame_maps(_LABELS, torch.tensor([0.1, -0.2, 0.3]), _CLASS), "lam"),
    ("mu-nan", lambda: lame_maps(_LABELS, _CLASS, torch.tensor([0.1, float("nan"), 0.3])), "mu"),
]


@pytest.mark.parametrize("call, match", [(c, m) for _, c, m in LAME_BAD_INPUTS],
                         ids=[name for name, _, _ in LAME_BAD_INPUTS])
def test_lame_maps_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- modules -----------------------------------------------------------------------------------------------------

def test_modules_call_their_functions_with_the_stored_settings():
    torch.manual_seed(14)
    field = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    lam_map = torch.rand(2, 1, 4, 5, 6, dtype=torch.float64)
    spacing = (0.8, 1.5, 2.5)
    elastic = ElasticRegularizer(spacing=spacing, reduction="none")
    torch.testing.assert_close(elastic(field, lam_map, 0.3),
                               elastic_energy(field, lam_map, 0.3, spacing, reduction="none"))
    diffusion = DiffusionRegularizer(spacing=torch.tensor(spacing), reduction="sum")
    torch.testing.assert_close(diffusion(field, lam_map), diffusion_energy(field, lam_map, spacing, reduction="sum"))
    assert list(elastic.parameters()) == [] and list(elastic.buffers()) == []
    assert "reduction='none'" in repr(elastic)


@pytest.mark.parametrize("make, match", [
    (lambda: ElasticRegularizer(reduction="bogus"), "reduction"),
    (lambda: DiffusionRegularizer(reduction="max"), "reduction"),
    (lambda: ElasticRegularizer(spacing=(1.0, 0.0)), "spacing"),
    (lambda: DiffusionRegularizer(spacing=(1.0, 1.0, 1.0, 1.0)), "spacing"),
    (lambda: ElasticRegularizer(spacing=(1.0, 2.0, 3.0))(_V2, 1.0, 1.0), "spacing"),
])
def test_module_bad_settings_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_class_map_gathers_each_voxels_class_value_per_sample():
    labels = torch.tensor([[0, 1], [2, 1]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    values = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    expected = torch.tensor([[[[0.1, 0.2], [0.3, 0.2]]], [[[1.0, 2.0], [3.0, 2.0]]]])
    torch.testing.assert_close(class_map(labels, values), expected)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        class_map(labels, values[:, :2])


# --- bending energy --------------------------------------------------------------------------------------------

def _grid(shape, dtype=torch.float64):
    return torch.meshgrid(*[torch.arange(n, dtype=dtype) for n in shape], indexing="ij")


@pytest.mark.parametrize("shape, spacing", [((7, 6), None), ((7, 6), (1.5, 0.7)), ((5, 6, 4), (2.0, 1.0, 3.0))])
def test_bending_energy_is_zero_for_every_affine_field(shape, spacing):
    generator = torch.Generator().manual_seed(3)
    ndim = len(shape)
    coords = torch.stack(_grid(shape))  # [ndim, *S]
    matrix = torch.randn(ndim, ndim, generator=generator, dtype=torch.float64)
    offset = torch.randn(ndim, generator=generator, dtype=torch.float64)
    field = (torch.einsum("kl,l...->k...", matrix, coords) + offset.view(ndim, *[1] * ndim)).unsqueeze(0)
    energy = regularizers.bending_energy(field, 1.0, spacing=spacing, reduction="sum")
    assert abs(float(energy)) < 1e-20


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5)])
def test_bending_energy_of_a_quadratic_field_has_its_closed_form(spacing):
    # u_0 = c i^2 voxels = s0 c i^2 mm with x0 = s0 i mm: d^2 u_0 / dx0^2 = 2 c / s0 at the 1..n-2 interior rows.
    n0, n1, c = 6, 5, 0.3
    i, _ = _grid((n0, n1))
    field = torch.stack([c * i ** 2, torch.zeros_like(i)]).unsqueeze(0)
    expected = (2 * c / spacing[0]) ** 2 * (n0 - 2) / n0
    energy = regularizers.bending_energy(field, 1.0, spacing=spacing)
    assert float(energy) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5)])
def test_bending_energy_counts_a_mixed_derivative_twice(spacing):
    # u_1 = c i j voxels: d^2 u_1 / (dx0 dx1) = s1 c / (s0 s1) = c / s0 wherever both forward differences exist.
    n0, n1, c = 6, 5, 0.4
    i, j = _grid((n0, n1))
    field = torch.stack([torch.zeros_like(i), c * i * j]).unsqueeze(0)
    expected = 2 * (c / spacing[0]) ** 2 * (n0 - 1) * (n1 - 1) / (n0 * n1)
    assert float(regularizers.bending_energy(field, 1.0, spacing=spacing)) == pytest.approx(expected, rel=1e-12)


def test_bending_energy_scales_with_a_voxelwise_weight_and_has_gradients():
    generator = torch.Generator().manual_seed(0)
    field = torch.randn(1, 2, 6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(1, 1, 6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    density = regularizers.bending_energy(field, 1.0, reduction="none")
    torch.testing.assert_close(regularizers.bending_energy(field, weight, reduction="none"), weight * density)
    assert torch.autograd.gradcheck(lambda f, w: regularizers.bending_energy(f, w, spacing=(1.5, 0.5)),
                                    (field, weight))


def test_every_regularizer_of_the_table_trains_one_objective_step():
    from hypermorph_spatially_adaptive.core.objective import registration_loss, sample_training_hyperparams

    generator = torch.Generator().manual_seed(1)
    fixed, warped = torch.rand(2, 1, 1, 12, 10, generator=generator)
    labels = torch.randint(0, 3, (1, 1, 12, 10), generator=generator)
    for name, entry in regularizers.REGULARIZERS.items():
        velocity = torch.randn(1, 2, 12, 10, generator=generator, requires_grad=True)
        hyper = sample_training_hyperparams(1, 3, name, generator=generator)
        assert hyper.shape == (1, 3 * entry.values_per_class)
        terms = registration_loss(fixed, warped, velocity, hyper, regularizer=name, num_classes=3, labels=labels,
                                  spacing=(2.0, 1.0), ncc_window=5)
        terms.total.backward()
        assert torch.isfinite(velocity.grad).all() and velocity.grad.abs().sum() > 0, name
