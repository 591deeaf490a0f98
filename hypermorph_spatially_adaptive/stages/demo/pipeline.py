"""The whole pipeline on the synthetic phantom, where tissue-specific elasticity is true by construction.

    python demo.py                   # (or hypermorph-demo) 2D phantom 64x64, about 2 minutes on 2 CPU cores
    python demo.py --full            # 3D phantom 64^3 (50 subjects, ~20 min to generate on CPU), GPU training
    python demo.py --data-root DIR   # an existing phantom-layout dataset instead of a new phantom
    python demo.py --steps 50 ...    # any stage setting can be overridden (see --help)

Stages: phantom data -> global model -> spatially adaptive model -> parameter identification (population on the
validation pairs; subject-specific on each test pair; through the instance optimisation on a few validation pairs)
-> inference on the test pairs (with the instance-optimised methods and, when itk-elastix is installed, elastix)
-> locality -> summary. The
spatial model uses tissue-wise kernels taken from the global model (``--conditioning tissue``, 0 further steps);
``--conditioning vector --spatial-steps 1000`` trains the paper's variant instead. A rerun skips finished stages and
resumes training, so an interrupted demo continues where it stopped. The last step checks the paper's claim on this
data: tissue-specific parameters beat the best global ones on end-point error and TRE (and the control, the spatial
model at the global pair), and the identified stiffness ranks bone first.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...core.hyperparams import nb_hyp_params
from ...data import phantom
from ...data.pair_dataset import make_item
from ...data.phantom.writer import split_sizes
from ...data.registry import collate_pairs
from ...models.networks import HyperVxmDense
from ...runtime import resolve_device
from .. import api
from ..cli import HelpFormatter, run_stage, seed_value, write_config
from ..options import call_stage, options_class
from ..plan import Plan, count_parameters
from ..training.dry_run import measure_training_step
from ..training.stage import TrainingError
from ..training.step import LossOptions
from ..parameter_table import GLOBAL, read_parameters, with_subject_rows, write_parameters
from ..run_folder import check_resume, clear_folder, record_run, run_record
from . import verdict

__all__ = ["PRESETS", "INTEGER_SETTINGS", "build_parser", "run_demo", "DemoOptions", "demo", "main"]

# quick: a few minutes on 2 CPU cores; full: sized for one GPU. The spatial model is the global one with
# tissue-wise kernels (--conditioning tissue --init-from, no further steps: see README and docs/STUDY.md).
# instance_steps: Adam steps per level of the +io methods (0: none), their parameters chosen through the
# optimisation on io_val_pairs validation pairs (grid io_grid_step).
PRESETS = {
    "quick": dict(texture="ct", ndim=2, size=64, subjects=56, val=8, test=8, steps=2000, spatial_steps=0,
                  batch_size=4, lr=1e-3, enc_features=[16, 32, 32], dec_features=[32, 32, 32, 16], hyper_layers=4,
                  hyper_units=64, grid_step=0.1, instance_steps=100, io_val_pairs=4, io_grid_step=0.25),
    "full": dict(texture="ct", ndim=3, size=64, subjects=50, val=10, test=10, steps=20000, spatial_steps=0,
                 batch_size=1, lr=1e-4, enc_features=[16, 32, 32, 32], dec_features=[32, 32, 32, 32, 32, 16, 16],
                 hyper_layers=6, hyper_units=128, grid_step=0.1, instance_steps=200, io_val_pairs=4,
                 io_grid_step=0.25),
}
INTEGER_SETTINGS = ("size", "subjects", "val", "test", "steps", "spatial_steps", "batch_size", "instance_steps")


def build_parser() -> argparse.ArgumentParser:
    """Flags of the demo: the output folder, the preset and overrides of its settings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (data, runs, results)")
    parser.add_argument("--full", action="store_true", help="the 3D preset (GPU recommended)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--seed", type=seed_value, default=0, help="random seed of the data and the training")
    parser.add_argument("--data-root", default=None,
                        help="run on this existing phantom-layout dataset (PHANTOM_dataset.json) instead of writing "
                             "a new phantom under OUT/data")
    parser.add_argument("--conditioning", choices=("tissue", "vector", "maps"), default="tissue",
                        help="spatial-model variant (vector and maps need --spatial-steps > 0)")
    preset = parser.add_argument_group("overrides of the preset (default: the preset's value)")
    for name in INTEGER_SETTINGS:
        preset.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    preset.add_argument("--lr", type=float, default=None)
    preset.add_argument("--texture", choices=("rich", "ct"), default=None,
                        help="the phantom's images: rich (textured organs) or ct (non-contrast CT)")
    preset.add_argument("--grid-step", type=float, default=None, help="identification grid step")
    preset.add_argument("--workers", type=int, default=0, help="data-loading processes per training run")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove the demo already in --out and start afresh (a rerun otherwise continues it, "
                             "only with the same settings)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the stages and settings, time a few training steps of both models on synthetic "
                             "images of the preset's size, and write nothing")
    return parser


def _settings(args: argparse.Namespace) -> dict:
    settings = dict(PRESETS["full" if args.full else "quick"])
    for key in (*INTEGER_SETTINGS, "lr", "grid_step", "texture"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    for key in INTEGER_SETTINGS:
        if settings[key] < (0 if key in ("val", "test", "spatial_steps", "instance_steps") else 1):
            raise SystemExit(f"demo: --{key.replace('_', '-')} must be positive, got {settings[key]}")
    if args.conditioning != "tissue" and settings["spatial_steps"] == 0:
        raise SystemExit(f"demo: --conditioning {args.conditioning} starts from the global model's class mean and "
                         f"must be trained: give --spatial-steps (e.g. 1000)")
    if not (settings["lr"] > 0 and 0 < settings["grid_step"] <= 1):
        raise SystemExit(f"demo: --lr must be > 0 and --grid-step in (0, 1], got {settings['lr']}, "
                         f"{settings['grid_step']}")
    return settings


def _stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _dry_run(args: argparse.Namespace, settings: dict) -> str:
    """The demo's plan: its stages and settings, and a few training steps of each model timed on random images of
    the preset's size (the phantom is not generated)."""
    device = resolve_device(args.device)
    shape = (settings["size"],) * settings["ndim"]
    classes = phantom.CLASS_NAMES
    generator = torch.Generator().manual_seed(args.seed)
    batch = collate_pairs([
        make_item(torch.rand(shape, generator=generator).numpy(), torch.rand(shape, generator=generator).numpy(),
                  (2.0,) * len(shape), np.eye(4), f"synthetic{i}",
                  fixed_labels=torch.randint(0, len(classes), shape, generator=generator).numpy(),
                  moving_labels=torch.randint(0, len(classes), shape, generator=generator).numpy())
        for i in range(settings["batch_size"])])
    widths = dict(enc_features=settings["enc_features"], dec_features=settings["dec_features"],
                  hyper_layers=settings["hyper_layers"], hyper_units=settings["hyper_units"])
    n_train = split_sizes(settings["subjects"], settings["val"], settings["test"])[0]
    plan = Plan(f"the demo ({'full' if args.full else 'quick'} preset) into {args.out}")
    plan.add("data", f"the phantom at {args.data_root}" if args.data_root else
             f"phantom: {settings['subjects']} {settings['ndim']}D subjects of {'x'.join(map(str, shape))} "
             f"({n_train} train, {settings['val']} val, {settings['test']} test); generation not timed")
    plan.add("device", str(device) + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))
    for model_type, steps, classes_in_model in (("global", settings["steps"], 1),
                                                ("spatial", settings["spatial_steps"], len(classes))):
        model = HyperVxmDense(shape, nb_hyp_params("elastic", classes_in_model), **widths,
                              class_names=classes if classes_in_model > 1 else None,
                              **({"conditioning": args.conditioning} if classes_in_model > 1 else {})).to(device)
        options = LossOptions("elastic", classes_in_model, "fixed_labels", 9)
        measured = measure_training_step(model, batch, options, (2.0,) * len(shape), device, settings["lr"])
        plan.add(f"{model_type} model", f"{count_parameters(model):,} parameters, batch {settings['batch_size']}, "
                                        f"lr {settings['lr']:g}")
        plan.add_measurement(f"{model_type} training", measured, steps, "step")
    plan.add("then", f"identification (grid step {settings['grid_step']}) on the validation and test pairs, "
                     f"inference and locality on the test pairs, demo_summary.md (not timed)")
    return plan.print()


def run_demo(args: argparse.Namespace) -> Path | str:
    """Run (or resume) every stage under ``args.out``; return the path of the demo summary (with ``--dry-run``:
    print the plan, write nothing)."""
    out, settings = Path(args.out), _settings(args)
    if getattr(args, "dry_run", False):
        return _dry_run(args, settings)
    device = str(resolve_device(args.device))
    # A rerun continues the demo in --out: only with the same settings (each stage checks its own folder too).
    record = run_record("demo", {"full": args.full, "seed": args.seed, "conditioning": args.conditioning,
                                 "data_root": args.data_root, **settings}, paths=("data_root",))
    if args.overwrite:
        clear_folder(out)
    check_resume(out, record, flag="demo rerun")
    record_run(out, record)
    write_config(out, args, settings=settings)
    data = Path(args.data_root) if args.data_root else out / "data"
    if args.data_root and not (data / "PHANTOM_dataset.json").is_file():
        raise SystemExit(f"demo: --data-root {data}: no PHANTOM_dataset.json there (write one with phantom.py)")
    _stage(f"phantom data: {data}" if args.data_root else
           f"phantom data: {settings['subjects']} {settings['ndim']}D subjects of size {settings['size']}")
    if not (data / "PHANTOM_dataset.json").is_file():
        phantom.write_dataset(data, ndim=settings["ndim"], subjects=settings["subjects"],
                              shape=(settings["size"],) * settings["ndim"], seed=args.seed, val=settings["val"],
                              test=settings["test"], texture=settings["texture"])
    common = dict(dataset="phantom", data_root=data, device=device, seed=args.seed)
    widths = dict(enc_features=settings["enc_features"], dec_features=settings["dec_features"],
                  hyper_layers=settings["hyper_layers"], hyper_units=settings["hyper_units"])
    training = dict(common, **widths, batch_size=settings["batch_size"], lr=settings["lr"], lr_schedule="cosine",
                    workers=args.workers)
    stages = {"global": api.GlobalTrainOptions(**training, steps=settings["steps"], out=out / "global"),
              "spatial": api.SpatialTrainOptions(**training, steps=settings["spatial_steps"],
                                                 conditioning=args.conditioning,
                                                 init_from=out / "global",  # a run folder: its checkpoints/last.pt
                                                 out=out / "spatial")}
    for model_type, options in stages.items():
        run, steps = out / model_type, options.steps
        _stage(f"training the {model_type} model ({steps} steps)")
        if steps == 0 and (run / "checkpoints" / "last.pt").is_file():
            continue  # the warm-started model is written once
        api.train(dataclasses.replace(options, val_every=max(1, steps // 4), log_every=max(1, steps // 20),
                                      resume=(run / "checkpoints" / "last.pt").is_file()))
    identification = out / "identification"
    # Every stage reads the last checkpoint of a run (the default of the model flags).
    global_checkpoint = out / "global" / "checkpoints" / "last.pt"
    spatial_checkpoint = out / "spatial" / "checkpoints" / "last.pt"
    identify = dict(common, global_model=global_checkpoint, grid_step=settings["grid_step"])
    _stage("parameter identification: population on the validation pairs")
    if not (identification / "parameters.csv").is_file():
        api.identify(api.IdentifyOptions(**identify, split="val", out=identification))
    # Subject-specific parameters of a test pair are chosen on that pair with its own labels (optimistic for
    # Dice, as in the paper); the population parameters never see the test pairs.
    subjects = out / "identification_test_subjects"
    _stage("parameter identification: each test pair on its own (subject-specific)")
    if not (subjects / "parameters.csv").is_file():
        api.identify(api.IdentifyOptions(**identify, split="test", out=subjects))
    parameters = out / "parameters_for_inference.csv"
    population = read_parameters(identification / "parameters.csv")
    write_parameters(parameters, with_subject_rows(population, read_parameters(subjects / "parameters.csv")))
    io_methods, io_options = _instance_options(out, settings, common, global_checkpoint)
    results = out / "inference"
    # The control: the spatial model at the global pair for every class separates the parameters' effect from the
    # second network's (verdict.CONTROL).
    lam, mu = population.values(GLOBAL)
    _stage("inference on the test pairs")
    if not (results / "summary.csv").is_file():
        api.infer(api.InferOptions(**common, split="test", spatial_model=spatial_checkpoint,
                                   global_model=global_checkpoint, parameters=parameters,
                                   methods=[*verdict.METHODS, verdict.CONTROL, *io_methods],
                                   literature_params=[float(f"{float(lam[0]):.6g}"), float(f"{float(mu[0]):.6g}")],
                                   **io_options, out=results, resume=True))
    _stage("locality of the spatial model on the test pairs")
    if not (out / "locality" / "locality.csv").is_file():
        api.measure_locality(api.LocalityOptions(**common, split="test", spatial_model=spatial_checkpoint,
                                                 out=out / "locality"))
    _stage("result")
    summary = verdict.write_summary(results / "metrics.csv", identification / "parameters.csv",
                                    out / "demo_summary.md", out / "locality" / "locality.csv")
    print(summary.read_text())
    return summary


def _instance_options(out: Path, settings: dict, common: dict[str, Any],
                      global_checkpoint: Path) -> tuple[list[str], dict[str, Any]]:
    """Inference's extra methods (identity, and elastix when installed) and options of the instance-optimised
    methods, after choosing their parameters through the optimisation on the first validation pairs; none with
    ``instance_steps`` 0."""
    if not settings["instance_steps"]:
        return [], {}
    choice = out / "identification_io"
    _stage(f"parameter identification through the instance optimisation ({settings['io_val_pairs']} validation "
           "pairs)")
    if not (choice / "parameters.csv").is_file():
        api.identify(api.IdentifyOptions(**common, split="val", max_pairs=settings["io_val_pairs"],
                                         global_model=global_checkpoint, score_with="instance", criterion="tre",
                                         grid_step=settings["io_grid_step"], figures=0,
                                         instance_steps=settings["instance_steps"], out=choice))
    baseline = ["elastix"] if importlib.util.find_spec("itk") is not None else []
    return ["identity", *baseline], dict(instance_steps=settings["instance_steps"],
                                         instance_methods=["global", "tissue_population", "identity"],
                                         instance_parameters=choice / "parameters.csv")


DemoOptions = options_class("DemoOptions", build_parser, "the demo (demo.py)", __name__)


def demo(options: DemoOptions) -> Path:
    """The demo from Python: every stage under ``options.out``; returns the path of ``demo_summary.md``."""
    return Path(call_stage(options, run_demo, "demo")[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``demo.py`` and ``hypermorph-demo``."""
    return run_stage(build_parser(), run_demo, argv, errors=(ValueError, TrainingError), stage="demo")
