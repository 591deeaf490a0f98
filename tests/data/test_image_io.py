"""Image files of every ITK format: the same array and RAS affine as SimpleITK's own index -> physical mapping,
2D files, ITK displacement fields that SimpleITK's transform applies as the project warps, and the errors."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from file_formats import FORMAT_ENDINGS, grid_affine, itk_image, physical_point, rotation, write_dicom_series, \
    write_scene
from hypermorph_spatially_adaptive.core.transform import warp
from hypermorph_spatially_adaptive.data import image_io
from hypermorph_spatially_adaptive.data.grids import Grid, resample_volume

ROTATED = grid_affine(rotation(0.4, -0.25, 0.15), (1.5, 2.0, 2.5), (-20.5, 13.25, 7.0))
MIRRORED = grid_affine(rotation(0.3, 0.1, 0.0) @ np.diag([1.0, -1.0, 1.0]), (2.0, 1.0, 1.5), (5.0, -3.0, 11.0))


@pytest.fixture(scope="module")
def scene():
    return np.random.default_rng(0).integers(-1000, 1500, (7, 6, 5)).astype(np.int16)


def _path(folder, fmt, name="scene"):
    return folder / f"{name}{FORMAT_ENDINGS[fmt]}"


@pytest.mark.parametrize("fmt", list(FORMAT_ENDINGS))
def test_every_format_reads_the_same_array_and_affine_as_itk_maps_indices(fmt, scene, tmp_path):
    path = write_scene(scene, ROTATED, _path(tmp_path, fmt))
    array, affine = image_io.read_image(path)
    assert array.dtype == np.float32 and np.array_equal(array, scene)  # int16 round trips exactly, DICOM too
    np.testing.assert_allclose(affine, ROTATED, atol=1e-6)
    reference = itk_image(scene, ROTATED)  # what was written, with SimpleITK's own index -> physical map
    for index in [(0, 0, 0), (6, 5, 4), (3.5, 1.0, 2.25)]:
        np.testing.assert_allclose(affine @ [*index, 1.0], [*physical_point(reference, index), 1.0], atol=1e-5)
    header = image_io.read_header(path)
    assert header.shape == scene.shape and header.format == fmt and header.components == 1
    np.testing.assert_allclose(header.affine, affine, atol=1e-6)


@pytest.mark.parametrize("fmt", ["nifti", "mha", "nrrd"])
def test_a_left_handed_grid_and_the_package_writers_round_trip(fmt, scene, tmp_path):
    assert np.linalg.det(MIRRORED[:3, :3]) < 0
    array, affine = image_io.read_image(write_scene(scene, MIRRORED, _path(tmp_path, fmt)))
    np.testing.assert_allclose(affine, MIRRORED, atol=1e-6)
    written = image_io.write_image(_path(tmp_path, fmt, "again"), array, affine)
    again, again_affine = image_io.read_image(written)
    assert np.array_equal(again, scene)
    np.testing.assert_allclose(again_affine, MIRRORED, atol=1e-6)


def test_nifti_read_through_simpleitk_matches_nibabel(scene, tmp_path):
    image = nib.Nifti1Image(scene, ROTATED)
    image.set_qform(ROTATED, code=1)
    path = tmp_path / "nib.nii.gz"
    image.to_filename(str(path))
    array, affine = image_io.read_image(path)
    assert np.array_equal(array, np.asarray(nib.load(str(path)).dataobj))
    np.testing.assert_allclose(affine, nib.load(str(path)).affine, atol=1e-5)


@pytest.mark.parametrize("affine,dimension", [(np.diag([2.0, 3.0, 1.0, 1.0]), 2),
                                              (np.array([[2.0, 0, 0, 1], [0, 0, 1, 2], [0, 3, 0, 3], [0, 0, 0, 1]]), 3)])
def test_2d_arrays_are_2d_files_unless_their_plane_leaves_x_y(affine, dimension, tmp_path):
    # The second affine is a coronal slice (axes right, superior): written as one slice of a 3D image.
    array = np.arange(20, dtype=np.float32).reshape(4, 5)
    path = image_io.write_image(tmp_path / "plane.nrrd", array, affine)
    assert sitk.ReadImage(str(path)).GetDimension() == dimension
    back, back_affine = image_io.read_image(path)
    assert back.shape == (4, 5, 1) and np.array_equal(back[..., 0], array)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)
    assert image_io.read_header(path).shape == ((4, 5) if dimension == 2 else (4, 5, 1))


def test_a_displacement_file_is_the_itk_transform_of_the_voxel_field(tmp_path):
    # Intensities linear in world coordinates: linear interpolation is exact, so one resampling (ITK's
    # DisplacementFieldTransform) and two (onto the fixed grid, then the warp) agree inside the image.
    shape, moving_shape = (8, 7, 6), (24, 22, 20)
    fixed_affine = ROTATED
    moving_affine = grid_affine(rotation(0.2, 0.1, -0.3), (1.8, 1.6, 2.1), (0.0, 0.0, 0.0))
    # The two grids share their centre, so the fixed field of view lies well inside the moving one.
    centre = fixed_affine @ [*((np.array(shape) - 1) / 2), 1.0]
    moving_affine[:3, 3] = centre[:3] - moving_affine[:3, :3] @ ((np.array(moving_shape) - 1) / 2)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in moving_shape], indexing="ij"), -1)
    world = ijk @ moving_affine[:3, :3].T + moving_affine[:3, 3]
    moving = (100 + world @ [1.0, -2.0, 0.5]).astype(np.float32)
    rng = np.random.default_rng(1)
    field = 0.4 * rng.standard_normal((3, *shape))
    path = image_io.write_displacement(tmp_path / "disp.mha", field, fixed_affine)
    back, back_affine = image_io.read_displacement(path)
    np.testing.assert_allclose(back, field, atol=1e-12)
    np.testing.assert_allclose(back_affine, fixed_affine, atol=1e-12)

    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    reference = itk_image(np.zeros(shape, np.float32), fixed_affine)
    expected = sitk.GetArrayFromImage(sitk.Resample(itk_image(moving, moving_affine), reference, transform,
                                                    sitk.sitkLinear, 0.0, sitk.sitkFloat32)).transpose(2, 1, 0)
    on_fixed = resample_volume(moving, moving_affine, Grid(shape, fixed_affine), order=1)
    ours = warp(torch.from_numpy(on_fixed)[None, None], torch.from_numpy(field).float()[None])[0, 0].numpy()
    # Where x + u(x) leaves the fixed grid the warp sees no moving data (ITK still does): compare elsewhere.
    target = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")) + field
    inside = np.all((target >= 0) & (target <= np.array(shape)[:, None, None, None] - 1), axis=0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], expected[inside], atol=2e-3)


def test_unknown_endings_missing_files_and_vector_images_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown image format.*\.mha"):
        image_io.image_format(tmp_path / "image.png")
    with pytest.raises(FileNotFoundError, match="fixed image not found"):
        image_io.read_image(tmp_path / "none.nii.gz", "fixed image")
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "vector.mha"))
    with pytest.raises(ValueError, match="one value per voxel"):
        image_io.read_image(tmp_path / "vector.mha")
    (tmp_path / "broken.nrrd").write_text("not an image")
    with pytest.raises(ValueError, match="broken.nrrd"):
        image_io.read_header(tmp_path / "broken.nrrd")
    with pytest.raises(ValueError, match="whole numbers"):
        image_io.read_labels(image_io.write_image(tmp_path / "half.mha", np.full((3, 3, 3), 0.5), np.eye(4)))


def test_a_folder_of_two_dicom_series_is_refused(scene, tmp_path):
    folder = tmp_path / "two"
    for series in ("1", "2"):
        write_dicom_series(itk_image(scene, ROTATED), folder, series=series)
    with pytest.raises(ValueError, match="2 DICOM series"):
        image_io.read_image(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        image_io.read_header(tmp_path / "empty")


def test_a_nifti_whose_qform_and_sform_disagree_is_refused_not_misplaced(scene, tmp_path):
    # nibabel (and the Learn2Reg datasets) read the sform, ITK the qform: one file must have one affine.
    image = nib.Nifti1Image(scene, ROTATED)
    image.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    path = tmp_path / "two.nii.gz"
    image.to_filename(str(path))
    for read in (image_io.read_header, image_io.read_image):
        with pytest.raises(ValueError, match="(?s)qform and sform disagree.*set_qform"):
            read(path)
