"""The checkpoint format: every file records the model kind and its format; a file that does not is refused."""
import pytest
import torch

from hypermorph_spatially_adaptive import HyperVxmDense
from hypermorph_spatially_adaptive.models.checkpoints import (FORMAT, ModelKind, kind_from_config, model_kind,
                                                              read_checkpoint, resolve_checkpoint,
                                                              training_checkpoint)
from hypermorph_spatially_adaptive.models.networks import spatial_from_global
from hypermorph_spatially_adaptive.models.trained import load_trained_model

TINY = dict(enc_features=(4, 8), dec_features=(8, 8, 4), hyper_layers=2, hyper_units=8)
TISSUES = ["background", "tissue"]


def _model(nb_hyp_params, **kwargs):
    torch.manual_seed(0)
    return HyperVxmDense((16, 16), nb_hyp_params, **TINY, **kwargs)


def _file_without_kind(model, path, **extra):
    """A file whose model config lacks the kind: no ``regularizer``/``class_names`` keys."""
    config = {k: v for k, v in model.config.items() if k not in ("regularizer", "class_names")}
    torch.save({"format": FORMAT, "model_config": config, "model_state": model.state_dict(), **extra}, path)
    return path


def test_a_two_class_diffusion_model_reads_back_as_diffusion_spatial_not_global_elastic(tmp_path):
    model = _model(2, regularizer="diffusion", class_names=TISSUES)
    assert model.kind == ModelKind("spatial", "diffusion", tuple(TISSUES))
    model.save(tmp_path / "diffusion.pt")
    payload = read_checkpoint(tmp_path / "diffusion.pt")
    assert payload["model_config"]["regularizer"] == "diffusion"
    assert payload["model_config"]["class_names"] == TISSUES
    assert model_kind(payload) == ModelKind("spatial", "diffusion", tuple(TISSUES))
    loaded, info = load_trained_model(tmp_path / "diffusion.pt")
    assert (info.model_type, info.regularizer, info.class_names) == ("spatial", "diffusion", tuple(TISSUES))
    assert loaded.kind == model.kind and HyperVxmDense.load(tmp_path / "diffusion.pt").kind == model.kind
    with pytest.raises(ValueError, match="expected a global model"):
        load_trained_model(tmp_path / "diffusion.pt", expect="global")


@pytest.mark.parametrize("parameters, regularizer, names, kind", [
    (2, "elastic", None, ModelKind("global", "elastic", ())),
    (2, "elastic", ["background", "lung", "bone"], ModelKind("global", "elastic", ("background", "lung", "bone"))),
    (1, "diffusion", None, ModelKind("global", "diffusion", ())),
    (6, "elastic", ["a", "b", "c"], ModelKind("spatial", "elastic", ("a", "b", "c"))),
    (6, "elastic", None, ModelKind("spatial", "elastic", ("class_0", "class_1", "class_2"))),
    (3, "diffusion", ["a", "b", "c"], ModelKind("spatial", "diffusion", ("a", "b", "c"))),
])
def test_the_kind_follows_from_the_parameter_layout_in_the_config(parameters, regularizer, names, kind):
    config = {"nb_hyp_params": parameters, "regularizer": regularizer, "class_names": names}
    assert kind_from_config(config) == kind
    assert kind.nb_hyp_params == parameters


@pytest.mark.parametrize("parameters, regularizer, names, match", [
    (3, "elastic", None, "multiple of 2"),
    (4, "elastic", ["a", "b", "c"], "2 classes"),
    (2, "no_such_energy", None, "regularizer"),
    (4, "elastic", ["a", "a"], "distinct"),
])
def test_an_inconsistent_layout_is_refused_by_the_constructor(parameters, regularizer, names, match):
    with pytest.raises(ValueError, match=match):
        _model(parameters, regularizer=regularizer, class_names=names)


@pytest.mark.parametrize("parameters", [2, 4])
def test_a_file_that_does_not_record_its_model_kind_is_refused_naming_what_is_missing(parameters, tmp_path):
    path = _file_without_kind(_model(parameters, class_names=TISSUES if parameters > 2 else None), tmp_path / "k.pt")
    with pytest.raises(ValueError, match=r"k\.pt: model_config does not record its model kind.*'regularizer', "
                                         r"'class_names'"):
        HyperVxmDense.load(path)
    with pytest.raises(ValueError, match="--spatial-model .*does not record its model kind"):
        load_trained_model(path, argument="--spatial-model")


@pytest.mark.parametrize("version", ["hypermorph-v1", "hypermorph-v9", None])
def test_a_file_of_another_format_is_refused_naming_it(version, tmp_path):
    model = _model(2)
    payload = {"model_config": model.config, "model_state": model.state_dict()}
    torch.save(payload if version is None else {**payload, "format": version}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=rf"other\.pt: checkpoint format {version!r}, this version reads only "
                                         rf"'{FORMAT}'"):
        read_checkpoint(tmp_path / "other.pt")


def test_a_training_checkpoint_holds_the_model_file_and_the_resume_state(tmp_path):
    model = _model(4, class_names=TISSUES)
    payload = training_checkpoint(model, {"model_type": "spatial"}, {"state": {}}, 3, 1, 0.5, {"python": None})
    assert payload["format"] == FORMAT and payload["model_config"] == model.config
    for key in ("config", "optimizer_state", "step", "epoch", "best_score", "rng", "model_state"):
        assert key in payload


def test_a_run_folder_resolves_to_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _model(2).save(run / "checkpoints" / "last.pt")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.pt"
    assert resolve_checkpoint(run / "checkpoints" / "last.pt") == run / "checkpoints" / "last.pt"
    assert load_trained_model(run)[1].path == run / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match="--global-model .*checkpoint not found"):
        load_trained_model(tmp_path / "nothing", argument="--global-model")


def test_a_spatial_model_warm_started_from_a_global_one_takes_its_data_classes():
    global_model = _model(2, class_names=["background", "lung", "bone"])
    spatial = spatial_from_global(global_model, 3)
    assert spatial.kind == ModelKind("spatial", "elastic", ("background", "lung", "bone"))
    with pytest.raises(ValueError, match="global elastic model"):
        spatial_from_global(_model(1, regularizer="diffusion"), 3)
