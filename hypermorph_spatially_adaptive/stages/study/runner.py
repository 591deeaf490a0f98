"""Run the study's pipeline for one seed of one regime, resumably: phantom data, global model, identification, and per
variant the spatial model, inference with every method, and locality; with the preset's ``io_steps`` also the
instance optimisation and elastix. Finished stages are skipped on a rerun.

Layout under ``OUT/<preset>/<regime>/seed<k>/``: ``data/`` (the phantom), ``global/`` (training run), ``identification_val/``
(Dice, validation pairs: the global and population scopes), ``identification_test/`` (Dice, each test pair on its
own), ``identification_epe/`` (true EPE, validation pairs), ``parameters.csv`` (population plus the test pairs'
own rows), and per variant ``<variant>/spatial/``, ``<variant>/inference/`` (global, tissue_population,
tissue_subject, the control and the model oracle), ``<variant>/inference_epe/`` (the population chosen by EPE)
and ``<variant>/locality/`` (test pairs). With instance optimisation: ``identification_io/`` (parameters chosen
through the optimisation itself on the first ``io_val_pairs`` validation pairs, by TRE) and
``recommended/inference_io/`` (global, tissue_population and identity with their ``+io`` counterparts, and
elastix, on the test pairs in one process). The joint search: ``identification_joint/`` (the population vector
tuned through the recommended spatial model by Dice, validation pairs) and ``recommended/inference_joint/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...data import phantom
from ...models.checkpoints import RUN_CHECKPOINT, read_checkpoint
from ..identification import main as identify_main
from ..inference import main as infer_main
from ..locality import main as locality_main
from ..parameter_table import read_parameters, with_subject_rows, write_parameters
from ..training import main as train_main
from .presets import VARIANTS, Variant

__all__ = ["seed_folder", "run_seed", "IO_VARIANT"]

#: The variant whose spatial model starts tissue_population+io.
IO_VARIANT = "recommended"


def seed_folder(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def _run(stage: str, main: Callable[[Sequence[str]], int], argv: list[str]) -> None:
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"study: the {stage} stage failed with exit code {code} (arguments: {' '.join(argv)})")


def _train(model_type: str, out: Path, argv: list[str], steps: int) -> None:
    if (out / RUN_CHECKPOINT).is_file():
        state = read_checkpoint(out / RUN_CHECKPOINT)
        if int(state.get("step", -1)) >= steps:
            return
        argv = [*argv, "--resume"]
    every = ["--val-every", str(max(1, steps // 4)), "--log-every", str(max(1, steps // 20))]
    _run(f"{model_type} training", lambda a: train_main(model_type, a), [*argv, "--steps", str(steps), *every,
                                                                         "--out", str(out)])


def _identify(out: Path, argv: list[str]) -> None:
    if not (out / "parameters.csv").is_file():
        _run("identification", identify_main, [*argv, "--out", str(out)])


def _infer(out: Path, argv: list[str]) -> None:
    if not (out / "summary.csv").is_file():
        _run("inference", infer_main, [*argv, "--out", str(out), "--resume"])


def _variant_flags(variant: Variant, settings: dict[str, Any], model: list[str], global_run: Path) -> tuple[list, int]:
    steps = settings["paper_steps"] if variant.steps is None else variant.steps
    flags = ["--conditioning", variant.conditioning, "--class-sampling", variant.class_sampling]
    flags += ["--init-from", str(global_run)] if variant.warm_start else model
    return flags, steps


def run_seed(out: Path, seed: int, settings: dict[str, Any], variants: Sequence[str], device: str,
             threads: int = 0) -> Path:
    """Run (or resume) every stage of one seed under ``seed_folder(out, seed)``; return that folder."""
    if threads:
        torch.set_num_threads(threads)
    folder = seed_folder(out, seed)
    data = folder / "data"
    if not (data / "PHANTOM_dataset.json").is_file():
        phantom.write_dataset(data, ndim=settings["ndim"], subjects=settings["subjects"],
                              shape=(settings["size"],) * settings["ndim"], seed=seed, val=settings["val"],
                              test=settings["test"], texture=settings["texture"], progress=False)
    common = ["--dataset", "phantom", "--data-root", str(data), "--device", device, "--seed", str(seed)]
    model = ["--enc-features", *map(str, settings["enc_features"]), "--dec-features",
             *map(str, settings["dec_features"]), "--hyper-layers", str(settings["hyper_layers"]),
             "--hyper-units", str(settings["hyper_units"])]
    training = [*common, "--batch-size", str(settings["batch_size"]), "--lr", str(settings["lr"]),
                "--lr-schedule", "cosine", "--workers", "0"]
    global_run = folder / "global"
    _train("global", global_run, [*training, *model], settings["global_steps"])

    identify = [*common, "--global-model", str(global_run), "--grid-step", str(settings["grid_step"]),
                "--figures", "0"]
    _identify(folder / "identification_val", [*identify, "--split", "val"])
    _identify(folder / "identification_test", [*identify, "--split", "test"])
    _identify(folder / "identification_epe", [*identify, "--split", "val", "--criterion", "epe"])
    population = read_parameters(folder / "identification_val" / "parameters.csv")
    parameters = folder / "parameters.csv"
    if not parameters.is_file():
        write_parameters(parameters, with_subject_rows(
            population, read_parameters(folder / "identification_test" / "parameters.csv")))
    lam, mu = population.global_pair()

    for name in variants:
        variant_folder = folder / name
        flags, steps = _variant_flags(VARIANTS[name], settings, model, global_run)
        spatial = variant_folder / "spatial"
        _train("spatial", spatial, [*training, *flags], steps)
        infer = [*common, "--split", "test", "--spatial-model", str(spatial), "--global-model", str(global_run),
                 "--figures", "0", "--no-hd95"]
        _infer(variant_folder / "inference",
               [*infer, "--parameters", str(parameters), "--methods", "global", "tissue_population", "tissue_subject",
                "literature", "tissue_oracle", "--literature-params", f"{lam:.6g}", f"{mu:.6g}"])
        _infer(variant_folder / "inference_epe",
               [*infer, "--parameters", str(folder / "identification_epe" / "parameters.csv"), "--methods",
                "tissue_population", "--no-save-outputs"])
        if not (variant_folder / "locality" / "locality.csv").is_file():
            _run("locality", locality_main, [*common, "--split", "test", "--spatial-model", str(spatial),
                                             "--out", str(variant_folder / "locality")])
        if name == IO_VARIANT:
            _joint_search(folder, identify, infer, spatial)
        if name == IO_VARIANT and settings.get("io_steps"):
            _instance_optimisation(folder, settings, common, infer, parameters)
    return folder


def _joint_search(folder: Path, identify: list[str], infer: list[str], spatial: Path) -> None:
    """The joint search: the population vector tuned through the spatial model itself by the paper's criterion
    (Dice on the validation pairs; coordinate search from the paper's choice), then the test pairs with it."""
    choice = folder / "identification_joint"
    _identify(choice, [*identify, "--split", "val", "--refine", "--spatial-model", str(spatial)])
    _infer(folder / IO_VARIANT / "inference_joint",
           [*infer, "--parameters", str(choice / "parameters.csv"), "--refined", "--methods", "tissue_population",
            "--no-save-outputs"])


def _instance_optimisation(folder: Path, settings: dict[str, Any], common: list[str], infer: list[str],
                           parameters: Path) -> None:
    """Parameters chosen through the optimisation on validation pairs, then the optimised methods and elastix on
    the test pairs (the recommended variant's inference flags ``infer``)."""
    optimisation = ["--instance-steps", str(settings["io_steps"])]
    choice = folder / "identification_io"
    _identify(choice, [*common, "--split", "val", "--max-pairs", str(settings["io_val_pairs"]), "--global-model",
                       str(folder / "global"), "--score-with", "instance", "--criterion", "tre", "--grid-step",
                       str(settings["io_grid_step"]), "--figures", "0", *optimisation])
    methods = ["global", "tissue_population", "identity", *(["elastix"] if settings.get("elastix") else [])]
    _infer(folder / IO_VARIANT / "inference_io",
           [*infer, "--parameters", str(parameters), "--methods", *methods, *optimisation, "--instance-parameters",
            str(choice / "parameters.csv"), "--no-save-outputs"])
