"""parameters.csv: write -> read round trip, lookups by scope, and the errors a user meets."""
import math

import pytest
import torch

from hypermorph_spatially_adaptive.stages.parameter_table import (COLUMNS, ParameterRow, read_parameters,
                                                           write_parameters)

CLASSES = ("background", "lung", "bone")


def _rows(scope, lams, mus, score=0.5):
    return [ParameterRow(scope, c, CLASSES[c], lam, mu, "dice", score) for c, (lam, mu) in enumerate(zip(lams, mus))]


def _table(tmp_path):
    rows = (_rows("global", [0.3] * 3, [0.2] * 3) + _rows("population", [0.1, 0.2, 0.7], [0.05, 0.1, 0.3])
            + _rows("0003", [0.1, 0.4, 0.6], [0.0, 0.2, 0.4], score=math.nan))
    return write_parameters(tmp_path / "parameters.csv", rows), rows


def test_round_trip_keeps_every_value_exactly(tmp_path):
    path, rows = _table(tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    table = read_parameters(path, CLASSES)
    assert table.rows[:6] == rows[:6]
    assert math.isnan(table.rows[-1].score) and table.rows[-1].lam == rows[-1].lam
    assert table.pair_ids == ["0003"]


def test_hyper_lays_out_all_lambdas_then_all_mus(tmp_path):
    table = read_parameters(_table(tmp_path)[0])
    expected = torch.tensor([[0.1, 0.2, 0.7, 0.05, 0.1, 0.3]])
    torch.testing.assert_close(table.hyper("population"), expected)
    assert table.global_pair() == pytest.approx((0.3, 0.2))


def test_a_pair_without_its_own_rows_falls_back_to_the_population(tmp_path):
    table = read_parameters(_table(tmp_path)[0])
    assert table.subject_scope("0003") == "0003"
    assert table.subject_scope("0042") == "population"


def test_classes_that_do_not_match_the_model_are_rejected(tmp_path):
    path, _ = _table(tmp_path)
    with pytest.raises(ValueError, match="do not match the model's classes"):
        read_parameters(path, ("background", "lung", "liver"))


@pytest.mark.parametrize("edit,needle", [
    (lambda text: text.replace("scope,", "region,", 1), "missing column"),
    (lambda text: text.replace("0.7", "0.9"), "lam \\+ mu <= 1"),
    (lambda text: text.replace("0.7", "seven"), "line"),
    (lambda text: "\n".join(line for line in text.splitlines() if not line.startswith("population,2")), "class id"),
    (lambda text: text.replace("population,2,bone", "population,2,liver"), "named both"),
])
def test_a_malformed_file_is_rejected_naming_the_file(tmp_path, edit, needle):
    path, _ = _table(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=needle) as info:
        read_parameters(path)
    assert str(path) in str(info.value)


def test_a_missing_file_names_the_option(tmp_path):
    with pytest.raises(ValueError, match="--parameters"):
        read_parameters(tmp_path / "nope.csv")


def test_subject_rows_of_new_pairs_join_the_population_of_another_cohort(tmp_path):
    from hypermorph_spatially_adaptive.stages.parameter_table import with_subject_rows

    base = read_parameters(_table(tmp_path)[0])
    other = write_parameters(tmp_path / "new.csv", _rows("population", [0.5] * 3, [0.5] * 3)
                             + _rows("0042", [0.2, 0.3, 0.4], [0.1, 0.1, 0.1]))
    merged = read_parameters(write_parameters(tmp_path / "merged.csv",
                                              with_subject_rows(base, read_parameters(other))))
    assert merged.scopes == ["global", "population", "0042"]
    torch.testing.assert_close(merged.hyper("population"), base.hyper("population"))
    assert merged.subject_scope("0042") == "0042" and merged.subject_scope("0003") == "population"


def test_the_oracle_scope_is_shared_and_values_keep_the_files_precision(tmp_path):
    path = write_parameters(tmp_path / "p.csv", _rows("oracle", [0.1, 0.2, 0.7], [0.3, 0.1, 0.2], score=0.4)
                            + _rows("0003", [0.1] * 3, [0.1] * 3))
    table = read_parameters(path, CLASSES)
    assert table.has("oracle") and table.pair_ids == ["0003"]
    lam, mu = table.values("oracle", torch.float64)
    assert lam.dtype == torch.float64 and lam.tolist() == [0.1, 0.2, 0.7] and mu.tolist() == [0.3, 0.1, 0.2]
    assert table.values("oracle")[0].dtype == torch.float32
