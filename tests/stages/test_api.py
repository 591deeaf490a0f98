"""The stages as Python functions: options generated from the flags, converted as the flags are, and the README's
example run as written."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from hypermorph_spatially_adaptive.stages import api
from hypermorph_spatially_adaptive.stages.demo import DemoOptions
from hypermorph_spatially_adaptive.stages.options import COMMAND_LINE_ONLY, options_namespace
from hypermorph_spatially_adaptive.stages.study import StudyOptions

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = (api.GlobalTrainOptions, api.SpatialTrainOptions, api.IdentifyOptions, api.InferOptions,
           api.LocalityOptions, DemoOptions, StudyOptions)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda cls: cls.__name__)
def test_an_options_class_has_one_field_per_flag_with_the_flags_default(options):
    defaults = vars(options.build_parser().parse_args([]))
    defaults = {k: v for k, v in defaults.items() if k not in (*COMMAND_LINE_ONLY, "model_type")}
    fields = {field.name: field for field in dataclasses.fields(options)}
    assert set(fields) == set(defaults)
    built = options()
    assert {name: getattr(built, name) for name in fields} == defaults
    assert "--data-root" in options.__doc__ or options in (StudyOptions, DemoOptions)


def test_options_give_the_namespace_the_command_line_gives(tmp_path):
    argv = ["--data-root", str(tmp_path / "data"), "--split", "test", "--methods", "global", "literature",
            "--literature-params", "0.2", "0.3", "--no-hd95", "--figures", "0", "--dataset-option", "ndim=2",
            "--instance-levels", "2", "1", "--no-save-outputs", "--seed", "7"]
    options = api.InferOptions(data_root=tmp_path / "data", split="test", methods=("global", "literature"),
                               literature_params=[0.2, 0.3], hd95=False, figures=0, dataset_option=["ndim=2"],
                               instance_levels=(2, 1), no_save_outputs=True, seed=7)
    assert vars(options_namespace(options)) == vars(api.InferOptions.build_parser().parse_args(argv))
    trained = options_namespace(api.SpatialTrainOptions(steps=3, conditioning="vector"))
    assert trained.model_type == "spatial" and trained.steps == 3 and trained.conditioning == "vector"


@pytest.mark.parametrize("options, needle", [
    (dict(steps="many"), "GlobalTrainOptions.steps: invalid int value: 'many'"),
    (dict(ncc_window=[9, 9]), "GlobalTrainOptions.ncc_window takes one value"),
    (dict(amp="yes"), "GlobalTrainOptions.amp is a switch"),
    (dict(lr_schedule="linear"), "GlobalTrainOptions.lr_schedule: invalid choice: 'linear'"),
    (dict(seed=-1), "GlobalTrainOptions.seed"),
])
def test_a_bad_option_is_refused_naming_the_field_before_anything_is_written(tmp_path, options, needle):
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        api.train(api.GlobalTrainOptions(data_root=tmp_path, out=out, **options))
    assert needle in str(error.value) and not out.exists()


def test_train_takes_training_options_only(tmp_path):
    with pytest.raises(TypeError, match="GlobalTrainOptions or SpatialTrainOptions"):
        api.train(api.IdentifyOptions(out=tmp_path))


def test_the_demo_and_the_study_call_the_stage_functions_not_their_command_lines():
    for module in ("demo/pipeline.py", "study/runner.py", "study/command.py"):
        tree = ast.parse((ROOT / "hypermorph_spatially_adaptive" / "stages" / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names}
        assert "main" not in imported, module
        flags = [item.value for node in ast.walk(tree) if isinstance(node, (ast.List, ast.Tuple))
                 for item in node.elts if isinstance(item, ast.Constant) and str(item.value).startswith("--")]
        assert not flags, f"{module} builds a command line: {flags}"


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("```python", text.index("## Python API")) + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    result, field, chosen = scope["result"], scope["field"], scope["chosen"]
    assert [row["method"] for row in result.metrics] == ["global", "tissue_population"]
    assert all(0 <= row["dice_mean"] <= 1 and row["folding_percent"] >= 0 for row in result.metrics)
    assert field.shape == (32, 32, 2) and result.out == Path("runs/api/one_pair")
    assert chosen.parameters_file.is_file() and "population" in chosen.parameters.scopes
    assert scope["trained"].checkpoint.is_file() and scope["spatial"].checkpoint.is_file()
