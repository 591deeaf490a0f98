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

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from ...data import phantom
from ...models.checkpoints import RUN_CHECKPOINT, read_checkpoint
from .. import api
from ..parameter_table import read_parameters, with_subject_rows, write_parameters
from .presets import VARIANTS, Variant

__all__ = ["seed_folder", "run_seed", "IO_VARIANT"]

#: The variant whose spatial model starts tissue_population+io.
IO_VARIANT = "recommended"


def seed_folder(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def _train(options: api.GlobalTrainOptions | api.SpatialTrainOptions) -> None:
    out, steps, resume = Path(options.out), options.steps, False
    if (out / RUN_CHECKPOINT).is_file():
        if int(read_checkpoint(out / RUN_CHECKPOINT).get("step", -1)) >= steps:
            return
        resume = True
    api.train(dataclasses.replace(options, val_every=max(1, steps // 4), log_every=max(1, steps // 20),
                                  resume=resume))


def _identify(options: api.IdentifyOptions) -> None:
    if not (Path(options.out) / "parameters.csv").is_file():
        api.identify(options)


def _infer(options: api.InferOptions) -> None:
    if not (Path(options.out) / "summary.csv").is_file():
        api.infer(dataclasses.replace(options, resume=True))


def _variant_options(variant: Variant, settings: dict[str, Any], widths: dict[str, Any],
                     global_run: Path) -> tuple[dict[str, Any], int]:
    steps = settings["paper_steps"] if variant.steps is None else variant.steps
    options = dict(conditioning=variant.conditioning, class_sampling=variant.class_sampling)
    options.update(dict(init_from=global_run) if variant.warm_start else widths)
    return options, steps


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
    common = dict(dataset="phantom", data_root=data, device=device, seed=seed)
    widths = dict(enc_features=settings["enc_features"], dec_features=settings["dec_features"],
                  hyper_layers=settings["hyper_layers"], hyper_units=settings["hyper_units"])
    training = dict(common, batch_size=settings["batch_size"], lr=settings["lr"], lr_schedule="cosine", workers=0)
    global_run = folder / "global"
    _train(api.GlobalTrainOptions(**training, **widths, steps=settings["global_steps"], out=global_run))

    identify = dict(common, global_model=global_run, grid_step=settings["grid_step"], figures=0)
    _identify(api.IdentifyOptions(**identify, split="val", out=folder / "identification_val"))
    _identify(api.IdentifyOptions(**identify, split="test", out=folder / "identification_test"))
    _identify(api.IdentifyOptions(**identify, split="val", criterion="epe", out=folder / "identification_epe"))
    population = read_parameters(folder / "identification_val" / "parameters.csv")
    parameters = folder / "parameters.csv"
    if not parameters.is_file():
        write_parameters(parameters, with_subject_rows(
            population, read_parameters(folder / "identification_test" / "parameters.csv")))
    lam, mu = population.global_pair()

    for name in variants:
        variant_folder = folder / name
        options, steps = _variant_options(VARIANTS[name], settings, widths, global_run)
        spatial = variant_folder / "spatial"
        _train(api.SpatialTrainOptions(**training, **options, steps=steps, out=spatial))
        infer = dict(common, split="test", spatial_model=spatial, global_model=global_run, figures=0, hd95=False)
        _infer(api.InferOptions(**infer, parameters=parameters,
                                methods=["global", "tissue_population", "tissue_subject", "literature",
                                         "tissue_oracle"],
                                literature_params=[float(f"{lam:.6g}"), float(f"{mu:.6g}")],
                                out=variant_folder / "inference"))
        _infer(api.InferOptions(**infer, parameters=folder / "identification_epe" / "parameters.csv",
                                methods=["tissue_population"], no_save_outputs=True,
                                out=variant_folder / "inference_epe"))
        if not (variant_folder / "locality" / "locality.csv").is_file():
            api.measure_locality(api.LocalityOptions(**common, split="test", spatial_model=spatial,
                                                     out=variant_folder / "locality"))
        if name == IO_VARIANT:
            _joint_search(folder, identify, infer, spatial)
        if name == IO_VARIANT and settings.get("io_steps"):
            _instance_optimisation(folder, settings, common, infer, parameters)
    return folder


def _joint_search(folder: Path, identify: dict[str, Any], infer: dict[str, Any], spatial: Path) -> None:
    """The joint search: the population vector tuned through the spatial model itself by the paper's criterion
    (Dice on the validation pairs; coordinate search from the paper's choice), then the test pairs with it."""
    choice = folder / "identification_joint"
    _identify(api.IdentifyOptions(**identify, split="val", refine=True, spatial_model=spatial, out=choice))
    _infer(api.InferOptions(**infer, parameters=choice / "parameters.csv", refined=True,
                            methods=["tissue_population"], no_save_outputs=True,
                            out=folder / IO_VARIANT / "inference_joint"))


def _instance_optimisation(folder: Path, settings: dict[str, Any], common: dict[str, Any], infer: dict[str, Any],
                           parameters: Path) -> None:
    """Parameters chosen through the optimisation on validation pairs, then the optimised methods and elastix on
    the test pairs (the recommended variant's inference options ``infer``)."""
    choice = folder / "identification_io"
    _identify(api.IdentifyOptions(**common, split="val", max_pairs=settings["io_val_pairs"],
                                  global_model=folder / "global", score_with="instance", criterion="tre",
                                  grid_step=settings["io_grid_step"], figures=0, instance_steps=settings["io_steps"],
                                  instance_ncc_window=settings["io_ncc_window"], out=choice))
    methods = ["global", "tissue_population", "identity", *(["elastix"] if settings.get("elastix") else [])]
    _infer(api.InferOptions(**infer, parameters=parameters, methods=methods, instance_steps=settings["io_steps"],
                            instance_parameters=choice / "parameters.csv", no_save_outputs=True,
                            instance_ncc_window=settings["io_ncc_window"], out=folder / IO_VARIANT / "inference_io"))
