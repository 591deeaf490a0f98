"""One set of flag names for the same concept in every stage, as the README's flag table says, and the shared
plumbing: model flags (on the command line and in config files), (lam, mu) pairs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hypermorph_spatially_adaptive.stages import identification, inference, training
from hypermorph_spatially_adaptive.stages.cli import default_checkpoint, lam_mu, parse_args_with_config

ROOT = Path(__file__).resolve().parents[2]


def _options(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


STAGES = {
    "training": _options(training.build_parser("global")) | _options(training.build_parser("spatial")),
    "identification": _options(identification.build_parser()),
    "inference": _options(inference.build_parser()),
}


def _flag_table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| concept | training")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_every_flag_of_the_readme_table_exists_in_its_stage():
    rows = _flag_table()
    assert len(rows) >= 8
    for row in rows:
        for stage, cell in zip(STAGES, row[1:]):
            for flag in re.findall(r"`(--[a-z-]+)", cell):
                if flag in ("--fixed", "--moving") or stage in STAGES and flag in STAGES[stage]:
                    continue
                pytest.fail(f"README flag table, row {row[0]!r}: {flag} is not a flag of the {stage} stage")


@pytest.mark.parametrize("flag", ["--resume", "--out", "--device", "--seed", "--config", "--dataset", "--data-root"])
def test_shared_concepts_have_the_same_flag_everywhere(flag):
    assert all(flag in options for options in STAGES.values())


def test_renamed_flags_are_gone():
    for old in ("--val-pairs", "--val-lam", "--val-mu", "--subject-figures", "--background-value",
                "--literature-values"):
        assert not any(old in options for options in STAGES.values()), old


def test_resume_is_a_plain_flag_in_every_stage():
    assert training.build_parser("global").parse_args(["--resume"]).resume is True
    assert identification.build_parser().parse_args(["--resume"]).resume is True
    assert inference.build_parser().parse_args(["--resume"]).resume is True
    with pytest.raises(SystemExit):
        training.build_parser("global").parse_args(["--resume", "some/checkpoint.pt"])


def test_model_flags_default_to_the_last_checkpoint_of_the_default_run():
    args = identification.build_parser().parse_args([])
    assert args.global_model == default_checkpoint("global") == "runs/default/global/checkpoints/last.pt"
    args = inference.build_parser().parse_args(["--spatial-model", "s.pt"])
    assert args.spatial_model == "s.pt" and args.global_model == default_checkpoint("global")
    assert inference.build_parser().parse_args([]).spatial_model == default_checkpoint("spatial")


def test_a_config_file_may_name_a_flag_by_its_dest_or_its_option(tmp_path):
    config = tmp_path / "identify.yaml"
    config.write_text("global-model: runs/x/global\nfigures: 0\n")
    args = parse_args_with_config(identification.build_parser(), ["--config", str(config)])
    assert args.global_model == "runs/x/global" and args.figures == 0
    config.write_text("model: runs/x/global\n")
    with pytest.raises(ValueError, match="model"):
        parse_args_with_config(identification.build_parser(), ["--config", str(config)])


def test_a_pair_of_parameters_is_checked_the_same_way():
    assert lam_mu([0.3, 0.7], "--val-params") == (0.3, 0.7)
    with pytest.raises(ValueError, match="--literature-params 0.6 0.6: need lam, mu >= 0 with lam \\+ mu <= 1"):
        lam_mu([0.6, 0.6], "--literature-params")


@pytest.mark.parametrize("text,dest,expected", [
    ("steps: 3", "steps", 3), ("steps: '3'", "steps", 3), ("lr: 1", "lr", 1.0), ("amp: true", "amp", True),
    ("val-params: [0.2, 0.3]", "val_params", [0.2, 0.3]), ("enc_features: 8", "enc_features", [8]),
    ("dataset_option: cache=true", "dataset_option", ["cache=true"]), ("steps: null", "steps", None),
    ("no_data_scan: true", "data_scan", False), ("data_scan: false", "data_scan", False),
    ("lr_schedule: cosine", "lr_schedule", "cosine"),
])
def test_config_values_are_converted_as_the_flags_convert_them(tmp_path, text, dest, expected):
    config = tmp_path / "options.yaml"
    config.write_text(text + "\n")
    args = parse_args_with_config(training.build_parser("global"), ["--config", str(config)])
    assert getattr(args, dest) == expected and type(getattr(args, dest)) is type(expected)


@pytest.mark.parametrize("text,needle", [
    ("steps: 2.7", "'steps': invalid int value: '2.7'"), ("steps: true", "'steps': expected a number, got true"),
    ("amp: 'no'", "'amp' is a switch: give true or false, got 'no'"), ("amp: 1", "'amp' is a switch"),
    ("lr_schedule: linear", "'lr_schedule': invalid choice: 'linear'"), ("lr: null", "'lr' cannot be null"),
    ("val_params: [0.1]", "'val_params' takes 2 values"), ("steps: [1, 2]", "'steps' takes one value"),
    ("help: true", "unknown option 'help'"), ("enc_features: [8, x]", "invalid int value: 'x'"),
])
def test_config_values_the_flags_would_refuse_are_refused_naming_the_file_and_key(tmp_path, text, needle):
    config = tmp_path / "options.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ValueError) as error:
        parse_args_with_config(training.build_parser("global"), ["--config", str(config)])
    assert str(error.value).startswith(f"--config {config}: ") and needle in str(error.value)


def test_a_negating_name_in_a_config_file_turns_the_switch_off(tmp_path):
    assert inference.build_parser().parse_args([]).hd95 is True
    config = tmp_path / "options.json"
    for options, expected in (({"no_hd95": True}, False), ({"hd95": False}, False), ({"no-hd95": False}, True)):
        config.write_text(json.dumps(options))
        assert parse_args_with_config(inference.build_parser(), ["--config", str(config)]).hd95 is expected
