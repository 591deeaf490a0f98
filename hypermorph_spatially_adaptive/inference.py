"""Inference: register pairs with identified parameters, score them, write the outputs and the report.

Methods compared on the same pairs (``--methods``):

- ``global``: the global model (``--global-model``) at the ``global`` scope of ``parameters.csv``;
- ``tissue_population``: the spatial model (``--model``) with the ``population`` vector (``population_refined``
  with ``--refined`` when the file has it);
- ``tissue_subject``: the spatial model with the pair's own rows, or the population vector when the file has
  none for the pair (the ``parameters_source`` column says which scope was used);
- ``literature`` (optional): the spatial model with ``--literature-values`` (2 values for every class, or 2C in
  vector order).

The networks see only the two images and the parameter vector; labels and keypoints are used for scoring only.
Outputs in ``OUT/<method>/``: ``warped_<stem>``, ``warped_labels_<stem>`` (with labels), ``disp_<stem>``
(Learn2Reg ``[*S, ndim]``, voxels) and ``jacdet_<stem>`` ``.nii.gz`` on the fixed grid with its affine, where
``<stem>`` is ``<fixed>_<moving>`` (:func:`output_stem`). ``OUT/metrics.csv`` (``report.metric_columns``),
``OUT/summary.{csv,md}`` (see ``report.py``), ``OUT/figures/`` and ``OUT/config.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

import eval_metrics

from . import inference_figures, nifti_io, report
from .checkpoints import ModelInfo, load_trained_model
from .cli import HelpFormatter, add_data_args, add_run_args, open_dataset, run_stage, write_config
from .evaluation import pair_metrics
from .hyperparams import validate_hyperparams
from .networks import HyperVxmDense
from .parameter_table import GLOBAL, POPULATION, POPULATION_REFINED, ParameterTable, read_parameters
from .runtime import atomic_write_json, resolve_device, seed_everything

__all__ = ["METHODS", "DEFAULT_METHODS", "PairResult", "build_parser", "method_parameters", "output_stem",
           "register", "score_pair", "write_outputs", "run", "main"]

METHODS = ("global", "tissue_population", "tissue_subject", "literature")
DEFAULT_METHODS = ("global", "tissue_population", "tissue_subject")
SPATIAL_METHODS = ("tissue_population", "tissue_subject", "literature")
LITERATURE = "literature"


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``inference.py``."""
    parser = argparse.ArgumentParser(
        description="Register pairs with the identified regularization parameters and compare the methods.\n"
                    "Writes OUT/<method>/{warped,warped_labels,disp,jacdet}_<fixed>_<moving>.nii.gz, "
                    "OUT/metrics.csv,\nOUT/summary.csv, OUT/summary.md, OUT/figures/ and OUT/config.json.",
        formatter_class=HelpFormatter)
    add_data_args(parser, split="test")
    add_run_args(parser, out="runs/default/inference")
    group = parser.add_argument_group("models and parameters")
    group.add_argument("--model", default="runs/default/spatial/checkpoints/best.pt",
                       help="spatially adaptive checkpoint (methods tissue_population, tissue_subject, literature)")
    group.add_argument("--global-model", default="runs/default/global/checkpoints/best.pt",
                       help="global checkpoint (method global)")
    group.add_argument("--parameters", default="runs/default/identification/parameters.csv",
                       help="parameters.csv written by parameter_identification.py")
    group.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                       help=f"methods to compare, of {', '.join(METHODS)}")
    group.add_argument("--refined", action="store_true",
                       help="use the population_refined scope instead of population when the file has it")
    group.add_argument("--literature-values", type=float, nargs="+", default=None, metavar="VALUE",
                       help="method literature: 'LAM MU' for every class, or lam_0..lam_{C-1} mu_0..mu_{C-1}")
    files = parser.add_argument_group("explicit files (instead of a dataset split)")
    files.add_argument("--fixed", default=None, help="fixed image (NIfTI); the outputs live on its grid")
    files.add_argument("--moving", default=None, help="moving image (NIfTI)")
    files.add_argument("--fixed-labels", default=None, help="fixed label map, for Dice/HD95 (with --moving-labels)")
    files.add_argument("--moving-labels", default=None, help="moving label map (on the moving image's grid)")
    files.add_argument("--fixed-keypoints", default=None, help="fixed keypoints CSV (voxels, no header), for TRE")
    files.add_argument("--moving-keypoints", default=None, help="moving keypoints CSV (voxels of the moving image)")
    files.add_argument("--pair-id", default=None,
                       help="id to look up subject-specific rows (default: <fixed stem>_<moving stem>)")
    files.add_argument("--intensity", choices=("auto", *nifti_io.INTENSITY_MODES), default="auto",
                       help="scaling to [0, 1] as in training: ct window, mr percentiles, none; auto: mr for a "
                            "model trained on acdc, else ct")
    files.add_argument("--no-resample", action="store_true",
                       help="fail instead of resampling a moving image on another grid onto the fixed grid")
    evaluation = parser.add_argument_group("evaluation and outputs")
    evaluation.add_argument("--hd95", action=argparse.BooleanOptionalAction, default=True,
                            help="compute HD95 (slow for large 3D label maps)")
    evaluation.add_argument("--no-save-outputs", action="store_true",
                            help="write metrics, summary and figures only (no NIfTI volumes)")
    evaluation.add_argument("--figures", type=int, default=4, metavar="N", help="figures for the first N pairs")
    evaluation.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs")
    evaluation.add_argument("--resume", action="store_true",
                            help="skip pairs whose rows (OUT/.partial/) and outputs already exist")
    return parser


# ------------------------------------------------------------------------------------------------------------
# Functional core
# ------------------------------------------------------------------------------------------------------------

def output_stem(pair_id: str) -> str:
    """Learn2Reg file stem ``<fixed case>_<moving case>`` of a dataset pair: ``"0101"`` -> ``"0101_0101"``.

    Ids with both cases already (``"0001_0002"``) or of other datasets (``"patient001"``) are kept as they are.
    """
    return f"{pair_id}_{pair_id}" if re.fullmatch(r"\d+", pair_id) else pair_id


def method_parameters(method: str, pair_id: str, table: ParameterTable, population_scope: str = POPULATION,
                      literature: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """The model input ``[1, P]`` of ``method`` for ``pair_id`` and the scope it came from.

    ``global`` -> ``[[lam, mu]]`` of the global scope; ``tissue_population`` -> ``population_scope``;
    ``tissue_subject`` -> the pair's own scope, else ``population_scope``; ``literature`` -> ``literature``.
    """
    if method == "global":
        return torch.tensor([table.global_pair()], dtype=torch.float32), GLOBAL
    if method == "tissue_population":
        return table.hyper(population_scope), population_scope
    if method == "tissue_subject":
        scope = table.subject_scope(pair_id, fallback=population_scope)
        return table.hyper(scope), scope
    if method == LITERATURE:
        if literature is None:
            raise ValueError("--methods literature needs --literature-values")
        return literature.reshape(1, -1).float(), LITERATURE
    raise ValueError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def register(model: HyperVxmDense, item: dict[str, Any], hyper: torch.Tensor,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Run ``model`` on one item: warped moving ``[1, 1, *S]``, displacement ``[1, ndim, *S]`` and the seconds
    spent in the forward pass and integration (CUDA synchronised before and after)."""
    moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
    hyper = hyper.to(device)
    _synchronize(device)
    start = time.perf_counter()
    output = model(moving, fixed, hyper)
    _synchronize(device)
    return output.warped, output.displacement, time.perf_counter() - start


@dataclass
class PairResult:
    """One pair registered by one method: arrays ``[*S]`` (field ``[ndim, *S]``) on the CPU and its metrics row."""

    warped: torch.Tensor
    warped_labels: torch.Tensor | None
    displacement: torch.Tensor
    jacdet: torch.Tensor
    row: dict[str, Any]


def score_pair(item: dict[str, Any], method: str, warped: torch.Tensor, displacement: torch.Tensor,
               runtime_s: float, source: str, class_names: Sequence[str], hd95: bool) -> PairResult:
    """Metrics row (contract columns plus ``epe_mm``, ``parameters_source``) and the arrays to write."""
    field = displacement[0].detach().cpu()
    warped_labels = None
    if "moving_labels" in item:
        warped_labels = eval_metrics.warp_labels(item["moving_labels"][None], field[None])[0, 0]
    jacdet = eval_metrics.jacobian_determinant(field, tuple(float(s) for s in item["spacing"]))
    metrics = pair_metrics(field, item, class_names, hd95=hd95, jacobian=jacdet, warped_labels=warped_labels)
    row = {"pair_id": item["pair_id"], "method": method, "hd95_mm": float("nan"), "epe_mm": float("nan"),
           **metrics, "runtime_s": runtime_s, "parameters_source": source}
    return PairResult(warped[0, 0].detach().cpu(), warped_labels, field, jacdet, row)


def _output_paths(out: Path, method: str, stem: str, labels: bool) -> dict[str, Path]:
    folder = out / method
    paths = {kind: folder / f"{kind}_{stem}.nii.gz" for kind in ("warped", "disp", "jacdet")}
    if labels:
        paths["warped_labels"] = folder / f"warped_labels_{stem}.nii.gz"
    return paths


def write_outputs(paths: dict[str, Path], result: PairResult, affine: torch.Tensor) -> None:
    """Write the NIfTI volumes of one result on the fixed grid (``affine`` 4x4)."""
    nifti_io.write_volume(paths["warped"], result.warped.float().numpy(), affine)
    nifti_io.write_displacement(paths["disp"], result.displacement, affine)
    nifti_io.write_volume(paths["jacdet"], result.jacdet.float().numpy(), affine)
    if "warped_labels" in paths:
        labels = result.warped_labels.numpy()
        nifti_io.write_volume(paths["warped_labels"], labels.astype("uint8" if labels.max(initial=0) < 256
                                                                    else "int16"), affine)


# ------------------------------------------------------------------------------------------------------------
# Validation (nothing is written until all of it has passed)
# ------------------------------------------------------------------------------------------------------------

@dataclass
class _Setup:
    args: argparse.Namespace
    out: Path
    device: torch.device
    methods: list[str]
    models: dict[str, tuple[HyperVxmDense, ModelInfo]]
    class_names: tuple[str, ...]
    table: ParameterTable
    population_scope: str
    literature: torch.Tensor | None
    pair_ids: list[str]
    stems: list[str]
    dataset: Any
    explicit_item: dict[str, Any] | None

    def item(self, index: int) -> dict[str, Any]:
        return self.explicit_item if self.explicit_item is not None else self.dataset[index]


def _check_methods(methods: Sequence[str]) -> list[str]:
    methods = [str(m) for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"--methods must name each method once, got {methods}")
    return methods


def _check_flags(args: argparse.Namespace) -> None:
    if (args.fixed is None) != (args.moving is None):
        raise ValueError("--fixed and --moving must be given together (explicit-files mode)")
    if args.fixed is None and args.data_root is None:
        raise ValueError("--data-root is required (the dataset folder), or give --fixed and --moving")
    if args.figures < 0:
        raise ValueError(f"--figures must be >= 0, got {args.figures}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {args.max_pairs}")


def _literature(values: Sequence[float] | None, class_names: Sequence[str]) -> torch.Tensor:
    if values is None:
        raise ValueError("--methods literature needs --literature-values (LAM MU, or 2C values)")
    C = len(class_names)
    if len(values) == 2:
        values = [values[0]] * C + [values[1]] * C
    if len(values) != 2 * C:
        raise ValueError(f"--literature-values: give 2 values (lam mu for every class) or {2 * C} (lambdas then "
                         f"mus of {list(class_names)}), got {len(values)}")
    return validate_hyperparams(torch.tensor([values], dtype=torch.float32), C, "--literature-values")


def _load_models(args: argparse.Namespace, methods: list[str], device: torch.device) -> dict:
    models = {}
    if any(m in SPATIAL_METHODS for m in methods):
        models["spatial"] = load_trained_model(args.model, expect="spatial", map_location=device, argument="--model")
    if "global" in methods:
        models["global"] = load_trained_model(args.global_model, expect="global", map_location=device,
                                              argument="--global-model")
    return models


def _reference_classes(models: dict, dataset: Any) -> tuple[str, ...] | None:
    """Classes every input must share: the spatial model's, else the dataset's, else a global model's."""
    if "spatial" in models:
        return models["spatial"][1].class_names
    if dataset is not None:
        return tuple(dataset.class_names)
    return models["global"][1].class_names or None


def _open_pairs(args: argparse.Namespace, models: dict) -> tuple[Any, dict | None]:
    if args.fixed is None:
        return open_dataset(args), None  # an empty split is a ValueError there
    intensity = args.intensity
    if intensity == "auto":
        trained_on = [(info.run_config or {}).get("dataset") for _, info in models.values()]
        intensity = "mr" if "acdc" in trained_on else "ct"
    classes = _reference_classes(models, None)
    item = nifti_io.read_pair(args.fixed, args.moving, fixed_labels=args.fixed_labels,
                              moving_labels=args.moving_labels, fixed_keypoints=args.fixed_keypoints,
                              moving_keypoints=args.moving_keypoints, intensity=intensity,
                              resample=not args.no_resample, num_classes=len(classes) if classes else None,
                              pair_id=args.pair_id)
    return None, item


def _check_scopes(table: ParameterTable, methods: list[str], population_scope: str, pair_ids: list[str],
                  source: str) -> None:
    needed = {}
    if "global" in methods:
        needed[GLOBAL] = "global"
    if "tissue_population" in methods:
        needed[population_scope] = "tissue_population"
    if "tissue_subject" in methods and any(not table.has(p) for p in pair_ids):
        needed[population_scope] = "tissue_subject (for pairs without their own rows)"
    for scope, method in needed.items():
        if not table.has(scope):
            raise ValueError(f"--parameters {source}: no rows for scope {scope!r}, needed by --methods {method}; "
                             f"scopes present: {table.scopes}")


def _prepare(args: argparse.Namespace) -> _Setup:
    methods = _check_methods(args.methods)
    _check_flags(args)
    device = resolve_device(args.device)
    models = _load_models(args, methods, device)
    dataset, explicit_item = _open_pairs(args, models)
    data_ndim = dataset.ndim if dataset is not None else explicit_item["fixed"].dim() - 1
    for kind, (model, info) in models.items():
        if model.ndim != data_ndim:
            flag = "--model" if kind == "spatial" else "--global-model"
            where = f"--dataset {args.dataset}" if dataset is not None else f"--fixed {args.fixed}"
            raise ValueError(f"{flag} {info.path}: a {model.ndim}D model cannot register the {data_ndim}D images of "
                             f"{where}")
    reference = _reference_classes(models, dataset)
    if dataset is not None and reference is not None and tuple(dataset.class_names) != tuple(reference):
        raise ValueError(f"--dataset {args.dataset}: classes {list(dataset.class_names)} do not match the classes "
                         f"of --model {args.model}: {list(reference)}")
    try:
        table = read_parameters(args.parameters, class_names=reference)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith("--parameters") else f"--parameters {message}") from error
    class_names = tuple(reference) if reference is not None else table.class_names
    population_scope = POPULATION_REFINED if args.refined and table.has(POPULATION_REFINED) else POPULATION
    if dataset is not None:
        pair_ids = dataset.pair_ids[: args.max_pairs]
        stems = [output_stem(p) for p in pair_ids]
    else:
        pair_ids = [explicit_item["pair_id"]]
        stems = [f"{nifti_io.file_stem(args.fixed)}_{nifti_io.file_stem(args.moving)}"]
    _check_scopes(table, methods, population_scope, pair_ids, args.parameters)
    literature = _literature(args.literature_values, class_names) if LITERATURE in methods else None
    out = Path(args.out)
    if not args.resume and ((out / "metrics.csv").exists() or (out / ".partial").exists()):
        raise ValueError(f"--out {out} already holds inference results; pass --resume to continue them or choose "
                         f"another --out")
    return _Setup(args, out, device, methods, models, class_names, table, population_scope, literature, pair_ids,
                  stems, dataset, explicit_item)


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------

def _notices(setup: _Setup) -> list[str]:
    notes = []
    if setup.args.refined and setup.population_scope != POPULATION_REFINED:
        notes.append(f"--refined: {setup.args.parameters} has no {POPULATION_REFINED!r} scope; using "
                     f"{POPULATION!r}")
    if "tissue_subject" in setup.methods:
        fallback = [p for p in setup.pair_ids if not setup.table.has(p)]
        if fallback:
            notes.append(f"tissue_subject: {len(fallback)} of {len(setup.pair_ids)} pair(s) have no subject-specific "
                         f"rows and use the {setup.population_scope!r} parameters: {', '.join(fallback)}")
    return notes


def _pending(setup: _Setup, index: int) -> tuple[list[str], dict[str, dict]]:
    """Methods still to run for pair ``index`` and the rows of those done by an earlier run (``--resume``)."""
    done: dict[str, dict] = {}
    if setup.args.resume:
        stem = setup.stems[index]
        for method in setup.methods:
            partial = setup.out / ".partial" / method / f"{stem}.json"
            outputs = _output_paths(setup.out, method, stem, labels=False)
            if partial.is_file() and (setup.args.no_save_outputs or all(p.is_file() for p in outputs.values())):
                done[method] = json.loads(partial.read_text())
    return [m for m in setup.methods if m not in done], done


def _run_pair(setup: _Setup, index: int, methods: list[str], warmed: set) -> dict[str, dict]:
    """Register, score and write pair ``index`` with ``methods``; returns their rows (figure for the first N)."""
    item = setup.item(index)
    pair_id, stem = setup.pair_ids[index], setup.stems[index]
    rows, kept = {}, {}
    for method in methods:
        hyper, source = method_parameters(method, pair_id, setup.table, setup.population_scope, setup.literature)
        kind = "global" if method == "global" else "spatial"
        model = setup.models[kind][0]
        if kind not in warmed:  # the first call pays for allocations and kernel selection; keep it out of runtime_s
            register(model, item, hyper, setup.device)
            warmed.add(kind)
        warped, displacement, runtime_s = register(model, item, hyper, setup.device)
        result = score_pair(item, method, warped, displacement, runtime_s, source, setup.class_names,
                            setup.args.hd95)
        if not setup.args.no_save_outputs:
            write_outputs(_output_paths(setup.out, method, stem, result.warped_labels is not None), result,
                          item["affine"])
        atomic_write_json(result.row, setup.out / ".partial" / method / f"{stem}.json")
        rows[method] = result.row
        if index < setup.args.figures:  # full volumes are kept only for the pairs that get a figure
            kept[method] = result
    if kept:
        inference_figures.pair_figure(setup.out / "figures" / f"pair_{stem}.png", item, kept, setup.class_names)
    return rows


def run(args: argparse.Namespace) -> Path:
    """Validate every input, then register, score and write (see the module docstring); returns ``--out``."""
    setup = _prepare(args)
    seed_everything(args.seed)
    setup.out.mkdir(parents=True, exist_ok=True)
    write_config(setup.out, args, methods=setup.methods, class_names=list(setup.class_names),
                 population_scope=setup.population_scope, pair_ids=setup.pair_ids,
                 models={kind: str(info.path) for kind, (_, info) in setup.models.items()})
    notes = _notices(setup)
    for note in notes:
        tqdm.write(f"notice: {note}")
    rows: list[dict] = []
    warmed: set = set()
    for index in tqdm(range(len(setup.pair_ids)), desc="inference", unit="pair", dynamic_ncols=True):
        pending, done = _pending(setup, index)
        if pending:
            done.update(_run_pair(setup, index, pending, warmed))
        rows.extend(done[m] for m in setup.methods)
    report.write_metrics(setup.out / "metrics.csv", rows, setup.class_names)
    summary = report.write_summary(setup.out, rows, setup.class_names, setup.methods, notes=notes)
    if args.figures > 0:
        inference_figures.dice_bar_chart(setup.out / "figures" / "dice_per_class.png", rows, setup.class_names,
                                         setup.methods)
    print(summary)
    return setup.out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inference.py``; returns the exit code (2 for bad input, nothing written)."""
    return run_stage(build_parser(), run, argv)
