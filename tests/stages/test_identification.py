import csv
import json
import math
import shutil
import statistics
from collections import defaultdict

import pytest
import torch

from hypermorph_spatially_adaptive.core import metrics as eval_metrics
from hypermorph_spatially_adaptive.stages.identification import choice, refinement, stage as identification_stage
from hypermorph_spatially_adaptive.models.trained import load_trained_model
from hypermorph_spatially_adaptive.evaluation.pair_metrics import end_point_error, pair_metrics
from hypermorph_spatially_adaptive.stages.identification.choice import choose_parameters
from hypermorph_spatially_adaptive.stages.identification.grid import parse_values, simplex_grid
from hypermorph_spatially_adaptive.stages.identification.grid_scores import (GRID_COLUMNS, GridScores,
                                                                             merge_grid_scores, read_grid_scores,
                                                                             write_grid_scores)
from hypermorph_spatially_adaptive.stages.identification.scoring import default_grid_batch
from hypermorph_spatially_adaptive.stages.identification import main
from hypermorph_spatially_adaptive.stages.parameter_table import COLUMNS, read_parameters

from hypermorph_spatially_adaptive import data as datasets

# The 30-step fixture models barely move the images, so every grid point would score the same. Scaling their final
# flow conv makes the fields, and with them the scores, depend on (lam, mu).
FLOW_GAIN = 20.0
CLASSES = ("background", "soft_tissue", "lung", "bone", "liver")


@pytest.fixture(scope="module")
def models(trained_global, trained_spatial, tmp_path_factory):
    folder = tmp_path_factory.mktemp("identification_models")
    paths = {}
    for name, run in (("global", trained_global), ("spatial", trained_spatial)):
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
        for key in ("flow.weight", "flow.bias"):
            state["model_state"][key] = state["model_state"][key] * FLOW_GAIN
        paths[name] = folder / f"{name}.pt"
        torch.save(state, paths[name])
    return paths


@pytest.fixture(scope="module")
def base(phantom_root, models):
    return ["--dataset", "phantom", "--data-root", str(phantom_root), "--split", "train", "--global-model",
            str(models["global"]), "--grid-step", "0.25", "--grid-batch", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def refine_flags(models):
    return ["--refine", "--spatial-model", str(models["spatial"]), "--refine-sweeps", "1", "--figures", "1"]


@pytest.fixture(scope="module")
def single_run(base, refine_flags, tmp_path_factory):
    out = tmp_path_factory.mktemp("identification") / "single"
    assert main([*base, *refine_flags, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shard_runs(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    outs = [folder / f"shard{k}" for k in (1, 2)]
    for k, out in enumerate(outs, start=1):
        assert main([*base, "--shard", f"{k}/2", "--out", str(out)]) == 0
    return outs


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _nanmean(values):
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _argmax(scores):
    """First grid point (in (lam, mu) order) with the highest finite score, never (0, 0)."""
    candidates = [(point, s) for point, s in sorted(scores.items()) if point != (0.0, 0.0) and not math.isnan(s)]
    best = max(s for _, s in candidates)
    return next(point for point, s in candidates if s == best), best


# --------------------------------------------------------------------------------------------- grids and scores

def test_default_grid_has_66_exact_points_on_the_simplex_in_grid_order():
    grid = simplex_grid(0.1)
    assert grid.shape == (66, 2)
    points = [tuple(p) for p in grid.tolist()]
    assert points == sorted(points) and (0.0, 0.0) in points and (0.3, 0.7) in points and (1.0, 0.0) in points
    assert all(lam + mu <= 1 + 1e-12 for lam, mu in points)
    assert simplex_grid(0.5).tolist() == [[0.0, 0.0], [0.0, 0.5], [0.0, 1.0], [0.5, 0.0], [0.5, 0.5], [1.0, 0.0]]


def test_value_lists_accept_ranges_without_float_drift():
    assert parse_values(["0:0.5:0.1", "0.9"], "--lam-values") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    with pytest.raises(ValueError, match="--mu-values"):
        parse_values(["0:1:0.3"], "--mu-values")


def _scores(dice, tre=None, grid=None):
    grid = simplex_grid(0.5) if grid is None else grid
    dice = torch.as_tensor(dice, dtype=torch.float64)
    tre = torch.full_like(dice, math.nan) if tre is None else torch.as_tensor(tre, dtype=torch.float64)
    pairs = tuple(f"{p:04d}" for p in range(1, dice.shape[0] + 1))
    return GridScores(pairs, grid, ("background", "a", "b"), {"dice": dice, "tre_mm": tre})


def test_zero_zero_is_evaluated_but_never_chosen_even_when_it_scores_best():
    # 6 grid points (step 0.5), 3 classes; (0, 0) (index 0) is best everywhere, then (0.5, 0) (index 3).
    dice = torch.full((2, 6, 3), 0.5)
    dice[:, 0] = 0.99
    dice[:, 3] = 0.9
    rows = choose_parameters(_scores(dice), "dice", "population")
    assert all((r.lam, r.mu) == (0.5, 0.0) for r in rows)
    assert all(r.score == pytest.approx(0.9) for r in rows)


def test_tre_criterion_minimises_and_classes_without_keypoints_fall_back_to_dice():
    dice = torch.full((1, 6, 3), 0.5)
    dice[0, 2, 1] = 0.8  # class a: best Dice at (0, 1)
    tre = torch.full((1, 6, 3), math.nan)
    tre[0, :, 2] = torch.tensor([0.1, 3.0, 2.0, 1.0, 4.0, 5.0])  # class b: lowest allowed TRE 1.0 at (0.5, 0)
    rows = {(r.scope, r.class_name): r for r in choose_parameters(_scores(dice, tre), "tre", "population")}
    b = rows["population", "b"]
    assert (b.criterion, b.lam, b.mu) == ("tre", 0.5, 0)
    assert b.score == 1.0
    assert (rows["population", "a"].criterion, rows["population", "a"].mu) == ("dice", 1.0)
    assert rows["global", "b"].lam == 0.5 and rows["global", "b"].score == 1.0  # only b has TRE: it decides


def test_background_policies_global_population_and_fixed():
    dice = torch.full((1, 6, 3), 0.5)
    dice[0, 1, 0] = 0.9  # background alone prefers (0, 0.5)
    dice[0, 5, 1:] = 0.7  # the foreground prefers (1, 0)
    scores = _scores(dice)
    background = {policy: next(r for r in choose_parameters(scores, "dice", policy, (0.5, 0.5))
                               if r.scope == "population" and r.class_id == 0) for policy in ("global", "population",
                                                                                           "fixed")}
    assert (background["global"].lam, background["global"].mu) == (1.0, 0.0)
    assert (background["population"].lam, background["population"].mu) == (0.0, 0.5)
    assert (background["fixed"].lam, background["fixed"].mu, background["fixed"].score) == (0.5, 0.5, 0.5)


def test_grid_scores_csv_round_trips_exactly_and_merge_rejects_overlaps_and_other_grids(tmp_path):
    generator = torch.Generator().manual_seed(1)
    dice = torch.rand(2, 6, 3, generator=generator, dtype=torch.float64)
    dice[0, 1, 2] = math.nan
    scores = _scores(dice, torch.rand(2, 6, 3, generator=generator, dtype=torch.float64))
    back = read_grid_scores(write_grid_scores(tmp_path / "g.csv", scores))
    assert back.pair_ids == scores.pair_ids and back.class_names == scores.class_names
    assert torch.equal(back.grid, scores.grid)
    for name in ("dice", "tre_mm"):
        torch.testing.assert_close(back.metrics[name], scores.metrics[name], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="both"):
        merge_grid_scores([scores, scores], ["a", "b"])
    other = _scores(dice, grid=simplex_grid(0.25)[:6])
    with pytest.raises(ValueError, match="grid"):
        merge_grid_scores([scores, GridScores(("0009",), other.grid, other.class_names,
                                              {k: v[:1] for k, v in other.metrics.items()})], ["a", "b"])


def test_epe_criterion_minimises_each_class_and_the_global_scope_minimises_the_foreground_mean():
    # Two pairs, 6 grid points (step 0.5), classes background, a, b. Class a: lowest EPE at (0, 1) (index 2); class b:
    # at (1, 0) (index 5); (0, 0) is lowest for both but never chosen; the background's own minimum is ignored.
    epe = torch.full((2, 6, 3), 3.0, dtype=torch.float64)
    epe[:, 0, 1:] = 0.1
    epe[:, :, 0] = torch.tensor([5.0, 0.2, 5.0, 5.0, 5.0, 5.0])
    epe[:, 2, 1], epe[:, 5, 2] = 1.0, 1.5
    epe[1, 5, 2] = math.nan  # class b absent from pair 2 there: the mean over pairs ignores it
    scores = GridScores(("0001", "0002"), simplex_grid(0.5), ("background", "a", "b"),
                        {"dice": torch.full((2, 6, 3), 0.5, dtype=torch.float64), "epe_mm": epe})
    rows = {(r.scope, r.class_name): r for r in choose_parameters(scores, "epe", "global")}
    assert (rows["population", "a"].lam, rows["population", "a"].mu, rows["population", "a"].score) == (0, 1, 1.0)
    assert (rows["population", "b"].lam, rows["population", "b"].mu, rows["population", "b"].score) == (1, 0, 1.5)
    assert {r.criterion for r in rows.values()} == {"epe"}
    # global: mean over pairs of the foreground mean. (0, 1): (1 + 3) / 2 = 2 in both pairs; (1, 0): (3 + 1.5) / 2 in
    # pair 1 and 3 in pair 2 (b is NaN there), 2.625 on average. The background's own minimum at (0, 0.5) is ignored.
    assert (rows["global", "a"].lam, rows["global", "a"].mu) == (0, 1)
    torch.testing.assert_close(choice.objective(scores.metrics, "epe")[[2, 5]],
                               torch.tensor([2.0, (2.25 + 3.0) / 2], dtype=torch.float64))
    assert (rows["population", "background"].lam, rows["population", "background"].mu) == (0, 1)  # the global point
    # Pair 0002 alone: class b's minimum (1, 0) is NaN there, so its first allowed lowest value (0, 0.5) is chosen.
    assert (rows["0002", "b"].criterion, rows["0002", "b"].lam, rows["0002", "b"].mu) == ("epe", 0.0, 0.5)


def test_grid_scores_without_the_epe_column_are_refused_naming_the_expected_columns(tmp_path):
    dice = torch.rand(1, 6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    path = write_grid_scores(tmp_path / "g.csv", _scores(dice))
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(GRID_COLUMNS) and lines[0].endswith(",tre_mm,epe_mm")
    torch.testing.assert_close(read_grid_scores(path).dice, dice)
    short = tmp_path / "short.csv"
    short.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop the last column, epe_mm
    with pytest.raises(ValueError, match=r"short\.csv: columns .*a grid_scores.csv has columns .*'epe_mm'"):
        read_grid_scores(short)


def _synthetic_dice(bonus):
    """Stand-in for ``refinement.evaluate_vectors``: class Dice ``1 - |lam - 0.5| - |mu - 0.25|`` (best at
    (0.5, 0.25)), plus ``bonus`` whenever several vectors share a pass (an optimistic batched evaluation)."""
    def evaluate(model, items, hyper, num_classes):
        lam, mu = hyper[:, :num_classes], hyper[:, num_classes:]
        dice = (1 - (lam - 0.5).abs() - (mu - 0.25).abs() + (bonus if hyper.shape[0] > 1 else 0.0)).double()[None]
        return {"dice": dice, "tre_mm": torch.full_like(dice, math.nan), "epe_mm": 1 - dice}
    return evaluate


@pytest.mark.parametrize("criterion,start,end", [("dice", 0.5, 1.0), ("epe", 0.5, 0.0)])
def test_refine_climbs_to_the_best_lattice_point_of_each_foreground_class(monkeypatch, criterion, start, end):
    monkeypatch.setattr(refinement, "evaluate_vectors", _synthetic_dice(bonus=0.0))  # EPE = 1 - Dice: lowest there
    result = refinement.refine_vector(None, [None], torch.full((3,), 0.25), torch.full((3,), 0.5), step=0.25, sweeps=2,
                                      criterion=criterion)
    assert result.lam.tolist() == [0.25, 0.5, 0.5] and result.mu.tolist() == [0.5, 0.25, 0.25]  # background kept
    assert (result.start_score, result.score) == pytest.approx((start, end))
    assert result.class_score(1, criterion) == (criterion, pytest.approx(end))


def test_refine_keeps_its_start_when_the_moves_only_looked_better_in_a_batch(monkeypatch):
    # One sweep: class 1 moves to a neighbour that only the batch bonus made look better, then nothing beats it.
    monkeypatch.setattr(refinement, "evaluate_vectors", _synthetic_dice(bonus=0.3))
    result = refinement.refine_vector(None, [None], torch.full((3,), 0.5), torch.full((3,), 0.25), step=0.25, sweeps=1)
    assert result.lam.tolist() == [0.5] * 3 and result.mu.tolist() == [0.25] * 3
    assert result.score == result.start_score == 1.0


# --------------------------------------------------------------------------------------------- the stage

def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--global-model", "--grid-step", "--lam-values", "--criterion", "--background",
                 "--background-params", "--figures", "--selection-labels",
                 "--grid-batch", "--max-pairs", "--shard", "--merge", "--refine", "--spatial-model", "--resume",
                 "--dataset", "--data-root", "--split", "--out", "--device", "--seed", "--config"):
        assert flag in text


def test_csvs_follow_the_documented_schema(single_run):
    scores = _rows(single_run / "grid_scores.csv")
    assert tuple(scores[0]) == GRID_COLUMNS
    assert len(scores) == 4 * 15 * 5  # pairs x grid points x classes
    assert [(r["pair_id"], r["class_id"]) for r in scores[:6]] == [("0001", str(c)) for c in range(5)] + [("0001", "0")]
    assert any(r["tre_mm"] == "" for r in scores) and any(r["tre_mm"] != "" for r in scores)
    table = read_parameters(single_run / "parameters.csv", CLASSES)
    assert tuple(_rows(single_run / "parameters.csv")[0]) == COLUMNS
    assert table.scopes == ["global", "population", "population_refined", "0001", "0002", "0003", "0004"]


def test_each_chosen_value_is_the_argmax_of_grid_scores(single_run):
    dice = defaultdict(dict)  # (pair, class) -> {(lam, mu): Dice}
    for r in _rows(single_run / "grid_scores.csv"):
        dice[r["pair_id"], int(r["class_id"])][float(r["lam"]), float(r["mu"])] = float(r["dice"] or "nan")
    pairs, points = sorted({p for p, _ in dice}), sorted(dice["0001", 0])
    foreground = {point: _nanmean([_nanmean([dice[p, c][point] for c in range(1, 5)]) for p in pairs])
                  for point in points}
    global_point, _ = _argmax(foreground)
    chosen = {(r["scope"], int(r["class_id"])): r for r in _rows(single_run / "parameters.csv")}
    for scope, members in [("population", pairs)] + [(p, [p]) for p in pairs]:
        for c in range(5):
            class_scores = {point: _nanmean([dice[p, c][point] for p in members]) for point in points}
            point, best = _argmax(class_scores) if c else (global_point, class_scores[global_point])
            row = chosen[scope, c]
            assert (float(row["lam"]), float(row["mu"])) == point, (scope, c)
            assert float(row["score"]) == pytest.approx(best, abs=1e-12)
        assert (float(chosen["global", c]["lam"]), float(chosen["global", c]["mu"])) == global_point
    assert len({(r["lam"], r["mu"]) for r in chosen.values()}) > 2  # the choices really differ between classes


def test_batched_and_unbatched_grids_give_the_same_scores(single_run, base, tmp_path):
    # --shard 1/1 writes grid_scores.csv only (no choice, no figures): the cheapest full evaluation.
    assert main([*base, "--grid-batch", "1", "--max-pairs", "2", "--shard", "1/1", "--out", str(tmp_path / "b1")]) == 0
    batched = read_grid_scores(single_run / "grid_scores.csv")
    unbatched = read_grid_scores(tmp_path / "b1" / "grid_scores.csv")
    assert unbatched.pair_ids == batched.pair_ids[:2]
    for name in ("dice", "tre_mm", "epe_mm"):
        torch.testing.assert_close(unbatched.metrics[name], batched.metrics[name][:2], rtol=0, atol=1e-5,
                                   equal_nan=True)


def test_the_default_grid_batch_depends_on_the_device_and_is_recorded(base, tmp_path):
    assert default_grid_batch("cpu") == 4 and default_grid_batch(torch.device("cuda", 0)) == 16
    flags = [flag for i, flag in enumerate(base) if "--grid-batch" not in base[max(i - 1, 0):i + 1]]
    assert "--grid-batch" not in flags and len(flags) == len(base) - 2
    assert main([*flags, "--max-pairs", "1", "--shard", "1/1", "--out", str(tmp_path / "auto")]) == 0
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["options"]["grid_batch"] == 4


def test_refine_is_never_worse_than_its_start_on_the_tuning_pairs(single_run, phantom_root, models):
    table = read_parameters(single_run / "parameters.csv", CLASSES)
    model, _ = load_trained_model(models["spatial"], expect="spatial")
    dataset = datasets.get_dataset("phantom", phantom_root, "train")

    def mean_dice(scope):
        with torch.inference_mode():
            return statistics.fmean(
                pair_metrics(model(item["moving"][None], item["fixed"][None], table.hyper(scope),
                                   item["fixed_labels"][None]).displacement, item, CLASSES)["dice_mean"]
                for item in (dataset[i] for i in range(len(dataset))))

    start, refined = mean_dice("population"), mean_dice("population_refined")
    assert refined >= start
    summary = (single_run / "summary.md").read_text()
    assert f"start {start:.4f} -> refined {refined:.4f}" in summary


def test_two_shards_and_merge_equal_a_single_run(single_run, shard_runs, refine_flags, phantom_root, tmp_path):
    assert sorted(read_grid_scores(shard_runs[0] / "grid_scores.csv").pair_ids) == ["0001", "0003"]
    assert not (shard_runs[0] / "parameters.csv").exists() and not (shard_runs[0] / ".partial").exists()
    merged = tmp_path / "merged"
    assert main(["--merge", *map(str, shard_runs), "--out", str(merged), "--dataset", "phantom", "--data-root",
                 str(phantom_root), "--split", "train", *refine_flags]) == 0
    for name in ("grid_scores.csv", "parameters.csv"):
        assert (merged / name).read_bytes() == (single_run / name).read_bytes(), name
    figures = [sorted(p.name for p in (folder / "figures").iterdir()) for folder in (merged, single_run)]
    assert figures[0] == figures[1]


def test_merge_without_every_shard_is_refused(shard_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--merge", str(shard_runs[0]), "--out", str(tmp_path / "merged")])
    assert exit_info.value.code == 2 and "--merge" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()


def test_figures_exist_for_global_population_and_the_first_subjects(single_run):
    names = {p.name for p in (single_run / "figures").iterdir()}
    expected = {f"{scope}_{c}.png" for scope in ("global", "population", "0001") for c in CLASSES}
    assert names == expected
    assert all((single_run / "figures" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_selection_labels_choose_while_the_dataset_labels_score(single_run, base, phantom_root, tmp_path):
    # Automatic labels that miss the liver (class 4 relabelled soft tissue): they choose, the dataset's labels score.
    import nibabel as nib
    import numpy as np

    folder = tmp_path / "auto"
    folder.mkdir()
    for path in (phantom_root / "labelsTr").iterdir():
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj).copy()
        labels[labels == 4] = 1
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), str(folder / path.name))
    out = tmp_path / "selected"
    assert main([*base, "--max-pairs", "1", "--figures", "0", "--selection-labels", str(folder),
                 "--out", str(out)]) == 0
    selected, reference = read_grid_scores(out / "grid_scores.csv"), read_grid_scores(single_run / "grid_scores.csv")
    assert list(selected.metrics) == ["dice", "tre_mm", "epe_mm", "dice_eval", "tre_mm_eval", "epe_mm_eval"]
    assert selected.dice[0, :, 4].isnan().all()  # no liver in the choosing labels
    torch.testing.assert_close(selected.metrics["dice_eval"][0], reference.dice[0], equal_nan=True)
    summary = (out / "summary.md").read_text()
    assert f"Labels that chose: `{folder}`" in summary and "Labels that scored: the dataset's labels" in summary


def test_resume_skips_the_pairs_an_interrupted_run_finished(single_run, base, tmp_path, monkeypatch):
    out, calls = tmp_path / "resumed", []
    evaluate = identification_stage.evaluate_pair

    class Interrupted(Exception):
        pass

    def interrupted(*args, **kwargs):
        calls.append(args[1]["pair_id"])
        if len(calls) == 2:
            raise Interrupted
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(identification_stage, "evaluate_pair", interrupted)
    with pytest.raises(Interrupted):
        main([*base, "--shard", "1/1", "--out", str(out)])
    assert sorted(p.name for p in (out / ".partial").iterdir()) == ["0001.csv"]
    assert json.loads((out / "run.json").read_text())["stage"] == "identification"
    assert not (out / ".lock").exists()  # released when the run ended, even by an exception
    calls.clear()
    monkeypatch.setattr(identification_stage, "evaluate_pair", lambda *a, **k: calls.append(a[1]["pair_id"])
                        or evaluate(*a, **k))
    assert main([*base, "--shard", "1/1", "--resume", "--out", str(out)]) == 0
    assert calls == ["0002", "0003", "0004"] and not (out / ".partial").exists()
    assert (out / "grid_scores.csv").read_bytes() == (single_run / "grid_scores.csv").read_bytes()


@pytest.fixture(scope="module")
def epe_run(base, models, tmp_path_factory):
    """--criterion epe with --refine on two pairs and 6 grid points."""
    out = tmp_path_factory.mktemp("identification") / "epe"
    assert main([*base, "--grid-step", "0.5", "--max-pairs", "2", "--criterion", "epe", "--refine", "--spatial-model",
                 str(models["spatial"]), "--refine-sweeps", "1", "--figures", "0", "--out", str(out)]) == 0
    return out


def test_grid_scores_epe_is_the_global_models_mean_error_inside_each_class(single_run, phantom_root, models):
    scores = read_grid_scores(single_run / "grid_scores.csv")
    model, _ = load_trained_model(models["global"], expect="global")
    item = datasets.get_dataset("phantom", phantom_root, "train")[0]
    point = scores.grid.tolist().index([0.25, 0.5])
    with torch.inference_mode():
        field = model(item["moving"][None], item["fixed"][None], torch.tensor([[0.25, 0.5]])).displacement[0]
    spacing = tuple(item["spacing"].tolist())
    for c in range(len(CLASSES)):
        expected = end_point_error(field, item["gt_displacement"], spacing, item["fixed_labels"][0] == c)
        assert float(scores.epe_mm[0, point, c]) == pytest.approx(expected, rel=1e-4), CLASSES[c]
    assert bool(torch.isfinite(scores.epe_mm).all())  # every class is in every fixed label map of the phantom


def test_criterion_epe_chooses_the_lowest_class_error_and_refines_by_it(epe_run):
    scores = read_grid_scores(epe_run / "grid_scores.csv")
    rows = {(r.scope, r.class_id): r for r in read_parameters(epe_run / "parameters.csv", CLASSES).rows}
    allowed = [g for g, point in enumerate(scores.grid.tolist()) if point != [0.0, 0.0]]
    mean_error = scores.epe_mm.mean(0)  # [G, C] over the two pairs
    for c in range(1, len(CLASSES)):
        best = min(allowed, key=lambda g: (float(mean_error[g, c]), g))
        row = rows["population", c]
        assert (row.criterion, [row.lam, row.mu]) == ("epe", scores.grid[best].tolist())
        assert row.score == pytest.approx(float(mean_error[best, c]))
    overall = min(allowed, key=lambda g: (float(mean_error[g, 1:].mean()), g))
    assert [rows["global", 0].lam, rows["global", 0].mu] == scores.grid[overall].tolist()
    assert all(rows["population_refined", c].criterion == "epe" for c in range(len(CLASSES)))
    summary = (epe_run / "summary.md").read_text()
    assert "Criterion: epe" in summary and "objective epe" in summary
    start, refined = (float(v) for v in summary.split("start ")[1].split(" (")[0].split(" -> refined "))
    assert refined <= start


def test_criterion_epe_without_a_true_displacement_exits_2_and_writes_nothing(base, tmp_path, capsys, monkeypatch):
    from hypermorph_spatially_adaptive.data.phantom_dataset import PhantomDataset

    monkeypatch.setattr(PhantomDataset, "has_displacement", False)  # a dataset without ground truth
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--criterion", "epe", "--out", str(out)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--criterion epe" in error and "no true displacement" in error
    assert not out.exists()


@pytest.fixture(scope="module")
def broken_data(phantom_root, tmp_path_factory):
    """Copies of the phantom with an empty validation split and without keypoints."""
    folder = tmp_path_factory.mktemp("broken")
    empty, no_keypoints = folder / "empty", folder / "no_keypoints"
    shutil.copytree(phantom_root, empty)
    description = json.loads((empty / "PHANTOM_dataset.json").read_text())
    description["registration_val"] = []
    (empty / "PHANTOM_dataset.json").write_text(json.dumps(description))
    shutil.copytree(phantom_root, no_keypoints)
    shutil.rmtree(no_keypoints / "keypointsTr")  # optional for the test split only
    return {"empty": empty, "no_keypoints": no_keypoints}


@pytest.mark.parametrize("case,flag", [
    ("spatial_as_model", "--global-model"), ("global_as_spatial_model", "--spatial-model"),
    ("other_classes", "--global-model"),
    ("empty_split", "--data-root"), ("tre_without_keypoints", "--criterion tre"), ("shard_out_of_range", "--shard"),
    ("shard_unparsable", "--shard"), ("grid_step", "--grid-step"), ("selection_labels", "--selection-labels"),
])
def test_bad_input_exits_2_naming_the_option_and_writes_nothing(case, flag, base, models, broken_data, tmp_path,
                                                                capsys):
    argv = list(base)
    if case == "spatial_as_model":
        argv[argv.index("--global-model") + 1] = str(models["spatial"])
    elif case == "global_as_spatial_model":
        argv += ["--refine", "--spatial-model", str(models["global"])]
    elif case == "other_classes":
        state = torch.load(models["global"], weights_only=False)
        state["model_config"]["class_names"] = state["config"]["class_names"] = ["background", "lung"]
        torch.save(state, tmp_path / "other.pt")
        argv[argv.index("--global-model") + 1] = str(tmp_path / "other.pt")
    elif case == "empty_split":
        argv[argv.index("--data-root") + 1:argv.index("--split") + 2] = [str(broken_data["empty"]), "--split", "val"]
    elif case == "tre_without_keypoints":
        argv[argv.index("--data-root") + 1:argv.index("--split") + 2] = [str(broken_data["no_keypoints"]), "--split",
                                                                          "test"]
        argv += ["--criterion", "tre"]
    else:
        argv += {"shard_out_of_range": ["--shard", "3/2"], "shard_unparsable": ["--shard", "two"],
                 "grid_step": ["--grid-step", "0.3"],
                 "selection_labels": ["--selection-labels", str(tmp_path / "no")]}[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert flag in error, error
    assert not out.exists()


def test_criterion_epe_writes_the_headroom_and_the_stiffness_order(epe_run):
    from hypermorph_spatially_adaptive.data.phantom import TISSUES
    from hypermorph_spatially_adaptive.evaluation.rank_agreement import rank_agreement
    from hypermorph_spatially_adaptive.stages.identification.physics import HEADROOM_COLUMNS

    rows = {(r.scope, r.class_id): r for r in read_parameters(epe_run / "parameters.csv", CLASSES).rows}
    room = _rows(epe_run / "headroom.csv")
    assert tuple(room[0]) == HEADROOM_COLUMNS and [r["class_name"] for r in room] == list(CLASSES[1:])
    for r in room:  # the global scope's class score minus the population's, at their own points
        c = int(r["class_id"])
        assert float(r["gain_mm"]) == pytest.approx(rows["global", c].score - rows["population", c].score)
        assert [float(r["own_lam"]), float(r["own_mu"])] == [rows["population", c].lam, rows["population", c].mu]
        assert float(r["gain_mm"]) >= 0 and r["pairs"] == "2"
    expected = rank_agreement({CLASSES[c]: (rows["population", c].lam, rows["population", c].mu)
                               for c in range(len(CLASSES))}, {n: v["E"] for n, v in TISSUES.items()})
    summary = (epe_run / "summary.md").read_text()
    assert f"lam + mu {expected['lam_plus_mu']:.2f}, Young's modulus {expected['young']:.2f}" in summary
    assert "scope population_refined" in summary and "Headroom (headroom.csv" in summary
