"""The resolved inference run: methods, models, pairs and parameters checked before anything is written."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ...core.hyperparams import validate_hyperparams
from ...data import image_io, nifti_io
from ...models.trained import ModelInfo, load_trained_model
from ...models.networks import HyperVxmDense
from ...runtime import resolve_device
from ..cli import open_dataset, resolve_data_root
from ..parameter_table import GLOBAL, POPULATION, POPULATION_REFINED, ParameterTable, read_parameters
from ..run_folder import run_record
from .elastix import ELASTIX, ElastixSettings, import_elastix
from .instance import IDENTITY, InstanceOptions, with_io_methods
from .oracle import ORACLE_FILE, read_oracle
from .pairs import LITERATURE, METHODS, SPATIAL_METHODS, TISSUE_ORACLE, output_stem

__all__ = ["StageContext", "prepare", "run_identity", "OUTPUT_FORMATS", "SAME_FORMAT", "output_format"]

#: ``--output-format`` choices: a format of :mod:`...data.image_io`, or ``same`` (the fixed image's).
SAME_FORMAT = "same"
OUTPUT_FORMATS = ("nifti", SAME_FORMAT, "mha", "nrrd")

# Options that do not change the results (left out of run.json); models and parameters are recorded by their files'
# identity.
_NOT_RECORDED = ("out", "device", "config", "resume", "figures", "spatial_model", "global_model", "parameters",
                 "instance_parameters", "data_scan", "dry_run", "overwrite", "max_voxels")
_PATHS = ("data_root", "fixed", "moving", "fixed_labels", "moving_labels", "fixed_keypoints", "moving_keypoints")


@dataclass
class StageContext:
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
    formats: list[str]
    #: Method tissue_oracle: the pairs of --oracle-split that choose its vector, or the vector an earlier run chose
    #: (--resume), or the one this run chose (set by the stage).
    oracle_dataset: Any = None
    oracle_pair_ids: list[str] = field(default_factory=list)
    oracle: ParameterTable | None = None
    #: ``--instance-steps`` > 0: the optimisation's settings, and ``--instance-parameters`` when given.
    instance: InstanceOptions | None = None
    instance_table: ParameterTable | None = None
    #: Method elastix: its settings.
    elastix: ElastixSettings | None = None

    def item(self, index: int) -> dict[str, Any]:
        return self.explicit_item if self.explicit_item is not None else self.dataset[index]


def output_format(choice: str, fixed_file: Path) -> str:
    """The format of a pair's outputs: ``choice`` (``--output-format``), where ``same`` is the fixed image's format
    (a DICOM series or file: ``mha``)."""
    if choice != SAME_FORMAT:
        return choice
    fmt = image_io.image_format(fixed_file)
    return "mha" if fmt == "dicom" else fmt


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
    resolve_data_root(args)
    if args.fixed is None and args.data_root is None:
        raise ValueError("--data-root is required (the dataset folder; --pairs-csv for --dataset pairs), or give "
                         "--fixed and --moving")
    if args.figures < 0:
        raise ValueError(f"--figures must be >= 0, got {args.figures}")
    for flag, value in (("--max-pairs", args.max_pairs), ("--oracle-max-pairs", args.oracle_max_pairs),
                        ("--oracle-sweeps", args.oracle_sweeps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not 0 < args.oracle_step <= 1:
        raise ValueError(f"--oracle-step must lie in (0, 1], got {args.oracle_step}")


def _literature(values: Sequence[float] | None, class_names: Sequence[str]) -> torch.Tensor:
    if values is None:
        raise ValueError("--methods literature needs --literature-params (LAM MU, or 2C values)")
    C = len(class_names)
    if len(values) == 2:
        values = [values[0]] * C + [values[1]] * C
    if len(values) != 2 * C:
        raise ValueError(f"--literature-params: give 2 values (lam mu for every class) or {2 * C} (lambdas then "
                         f"mus of {list(class_names)}), got {len(values)}")
    return validate_hyperparams(torch.tensor([values], dtype=torch.float32), C, "--literature-params")


def _load_models(args: argparse.Namespace, methods: list[str], device: torch.device) -> dict:
    models = {}
    if any(m in SPATIAL_METHODS for m in methods):
        models["spatial"] = load_trained_model(args.spatial_model, expect="spatial", map_location=device,
                                               argument="--spatial-model")
    if "global" in methods:
        models["global"] = load_trained_model(args.global_model, expect="global", map_location=device,
                                              argument="--global-model")
    for kind, (_, info) in models.items():
        if info.regularizer != "elastic":  # parameters.csv and --literature-params hold (lam, mu) pairs
            raise ValueError(f"--{kind}-model {info.path}: a {info.regularizer} model; inference compares elastic "
                             f"models at (lam, mu) parameters, so it needs the elastic {kind} model")
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


def _check_labels_for_the_spatial_model(args: argparse.Namespace, models: dict, dataset: Any,
                                        explicit_item: dict | None) -> None:
    """A spatial model with ``maps`` or ``tissue`` conditioning places each class's values by the fixed labels, so
    every pair must have them (the paper's ``vector`` variant needs none)."""
    if "spatial" not in models or not models["spatial"][0].needs_labels:
        return
    model, info = models["spatial"]
    why = (f"--spatial-model {info.path} uses {model.conditioning!r} conditioning, which places each class's "
           f"parameters by the fixed image's labels (a 'vector' model, the paper's variant, needs none)")
    if explicit_item is not None and "fixed_labels" not in explicit_item:
        raise ValueError(f"--fixed-labels is required: {why}")
    if dataset is not None and len(dataset) and "fixed_labels" not in dataset[0]:
        raise ValueError(f"--dataset {args.dataset}: its pairs have no fixed labels; {why}")


def _check_scopes(table: ParameterTable, methods: list[str], population_scope: str, pair_ids: list[str],
                  source: str) -> None:
    needed = {}
    if "global" in methods:
        needed[GLOBAL] = "global"
    for method in ("tissue_population", IDENTITY):
        if method in methods:
            needed[population_scope] = method
    if "tissue_subject" in methods and any(not table.has(p) for p in pair_ids):
        needed[population_scope] = "tissue_subject (for pairs without their own rows)"
    if TISSUE_ORACLE in methods:
        needed.setdefault(population_scope, "tissue_oracle (its search starts there)")
    for scope, method in needed.items():
        if not table.has(scope):
            raise ValueError(f"--parameters {source}: no rows for scope {scope!r}, needed by --methods {method}; "
                             f"scopes present: {table.scopes}")


def _oracle_pairs(args: argparse.Namespace, models: dict, class_names: Sequence[str]) -> tuple[Any, list[str]]:
    """The dataset split and pair ids that choose the ``tissue_oracle`` vector, checked: ground truth and labels in
    its pairs, the spatial elastic model of the data's classes."""
    why = "tissue_oracle chooses its vector by the end-point error against the true displacement"
    model, info = models["spatial"]
    if info.regularizer != "elastic" or model.nb_hyp_params != 2 * len(class_names):
        raise ValueError(f"--spatial-model {info.path}: a {info.regularizer} model with {model.nb_hyp_params} "
                         f"parameters; {why} with the spatial elastic model ({2 * len(class_names)} parameters)")
    if args.data_root is None:
        raise ValueError(f"--methods tissue_oracle needs --data-root: {why} on the pairs of --oracle-split "
                         f"{args.oracle_split} of that dataset")
    try:
        dataset = open_dataset(args, split=args.oracle_split)
    except ValueError as error:
        raise ValueError(f"--oracle-split {args.oracle_split}: {error}") from error
    if tuple(dataset.class_names) != tuple(class_names) or dataset.ndim != model.ndim:
        raise ValueError(f"--oracle-split {args.oracle_split}: {dataset.ndim}D pairs with classes "
                         f"{list(dataset.class_names)}; the {model.ndim}D spatial model has {list(class_names)}")
    pair_ids = dataset.pair_ids[:args.oracle_max_pairs]
    first = dataset[0]
    for key, what in (("gt_displacement", "true displacement"), ("fixed_labels", "label maps")):
        if key not in first:
            raise ValueError(f"--oracle-split {args.oracle_split}: pair {pair_ids[0]} of --dataset {args.dataset} has "
                             f"no {what}; {why} inside each class, which only synthetic data such as the phantom "
                             f"allows")
    return dataset, pair_ids


def _read_table(flag: str, path: str, class_names: Sequence[str] | None) -> ParameterTable:
    try:
        return read_parameters(path, class_names=class_names)
    except ValueError as error:
        message = str(error).removeprefix("--parameters ")
        raise ValueError(message if message.startswith(flag) else f"{flag} {message}") from error


def _not_optimised(args: argparse.Namespace, methods: list[str]) -> list[str]:
    """The methods of ``--methods`` that get no ``+io`` counterpart: elastix, and those left out of
    ``--instance-methods`` when it is given."""
    chosen = args.instance_methods
    if chosen is None:
        return [ELASTIX]
    wrong = [m for m in chosen if m not in methods or m == ELASTIX]
    if wrong:
        raise ValueError(f"--instance-methods {wrong}: each must be one of --methods {methods}, elastix excluded")
    return [m for m in methods if m not in chosen]


def _check_instance(args: argparse.Namespace, methods: list[str], dataset: Any, explicit_item: dict | None,
                    population_scope: str, pair_ids: list[str], class_names: Sequence[str]
                    ) -> tuple[InstanceOptions | None, ParameterTable | None]:
    """``--instance-*`` checked: the options, the parameters file and its scopes, and the fixed labels that place
    the per-class values of the optimised spatial methods."""
    options = InstanceOptions.from_namespace(args)
    if args.instance_parameters is not None and not options.steps:
        raise ValueError("--instance-parameters needs --instance-steps N (N > 0)")
    if not options.steps:
        return None, None
    table = None
    if args.instance_parameters is not None:
        table = _read_table("--instance-parameters", args.instance_parameters, class_names)
        _check_scopes(table, [m for m in methods if m != ELASTIX], population_scope, pair_ids,
                      args.instance_parameters)
    per_class = [m for m in methods if m in SPATIAL_METHODS or m == IDENTITY]
    first = explicit_item if explicit_item is not None else (dataset[0] if dataset is not None and len(dataset) else {})
    if per_class and "fixed_labels" not in first:
        where = "--fixed-labels" if explicit_item is not None else f"--dataset {args.dataset}: fixed labels in its pairs"
        raise ValueError(f"--instance-steps: {where} required: the optimised {per_class[0]} places each class's "
                         f"parameters by the fixed image's labels")
    return options, table


def prepare(args: argparse.Namespace) -> StageContext:
    """Check every option and input, load the models, pairs and parameters; nothing is written."""
    methods = _check_methods(args.methods)
    _check_flags(args)
    elastix = None
    if ELASTIX in methods:
        elastix = ElastixSettings(args.elastix_bending_weight, args.elastix_iterations, args.elastix_resolutions)
        import_elastix()
    device = resolve_device(args.device)
    models = _load_models(args, methods, device)
    dataset, explicit_item = _open_pairs(args, models)
    data_ndim = dataset.ndim if dataset is not None else explicit_item["fixed"].dim() - 1
    for kind, (model, info) in models.items():
        if model.ndim != data_ndim:
            flag = f"--{kind}-model"
            where = f"--dataset {args.dataset}" if dataset is not None else f"--fixed {args.fixed}"
            raise ValueError(f"{flag} {info.path}: a {model.ndim}D model cannot register the {data_ndim}D images of "
                             f"{where}")
    _check_labels_for_the_spatial_model(args, models, dataset, explicit_item)
    reference = _reference_classes(models, dataset)
    if dataset is not None and reference is not None and tuple(dataset.class_names) != tuple(reference):
        raise ValueError(f"--dataset {args.dataset}: classes {list(dataset.class_names)} do not match the classes "
                         f"of --spatial-model {args.spatial_model}: {list(reference)}")
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
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"--dataset {args.dataset} split {args.split!r}: pairs {repeated} are listed more than once "
                         f"(their outputs would overwrite each other)")
    fixed_files = [Path(args.fixed)] if dataset is None else [dataset.fixed_file(i) for i in range(len(pair_ids))]
    formats = [output_format(args.output_format, path) for path in fixed_files]
    _check_scopes(table, methods, population_scope, pair_ids, args.parameters)
    literature = _literature(args.literature_params, class_names) if LITERATURE in methods else None
    out = Path(args.out)
    instance, instance_table = _check_instance(args, methods, dataset, explicit_item, population_scope, pair_ids,
                                               class_names)
    methods = with_io_methods(methods, instance is not None, not_optimised=_not_optimised(args, methods))
    ctx = StageContext(args, out, device, methods, models, class_names, table, population_scope, literature,
                       pair_ids, stems, dataset, explicit_item, formats, instance=instance,
                       instance_table=instance_table, elastix=elastix)
    if TISSUE_ORACLE in methods:
        ctx.oracle_dataset, ctx.oracle_pair_ids = _oracle_pairs(args, models, class_names)
        if args.resume and (out / ORACLE_FILE).is_file():
            ctx.oracle = read_oracle(out / ORACLE_FILE, class_names)
    return ctx


def run_identity(ctx: StageContext) -> dict[str, Any]:
    """What ``run.json`` records of an inference run, and a resumed run must match: every option that changes the
    results (paths resolved) and the identity of the models and the parameters file."""
    options = {key: value for key, value in vars(ctx.args).items() if key not in _NOT_RECORDED}
    inputs = {f"--{kind}-model": info.path for kind, (_, info) in ctx.models.items()}
    inputs["--instance-parameters"] = ctx.args.instance_parameters if ctx.instance is not None else None
    return run_record("inference", options, {**inputs, "--parameters": ctx.args.parameters}, paths=_PATHS)
