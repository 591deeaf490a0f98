"""``--dry-run`` of the training stage: the resolved run, a few measured training steps, and the plan; no file."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...core.objective import sample_training_hyperparams
from ...data.registry import collate_pairs
from ...models.networks import HyperVxmDense
from ...runtime import DistributedContext
from ..plan import Measurement, Plan, count_parameters, measure
from .context import StageContext, common_spacing
from .step import LossOptions, check_batch, training_network, training_step

__all__ = ["measure_training_step", "dry_run", "total_steps"]


def total_steps(args: Any, pairs: int, world_size: int = 1) -> tuple[int, int]:
    """``(total steps, steps per epoch)`` of a run over ``pairs`` training pairs (full batches only)."""
    per_epoch = max(1, pairs // (args.batch_size * world_size))
    return (args.steps if args.steps is not None else args.epochs * per_epoch), per_epoch


def measure_training_step(model: HyperVxmDense, batch: dict[str, Any], options: LossOptions,
                          spacing: Sequence[float], device: torch.device, lr: float = 1e-4,
                          calls: int = 3, class_sampling: str = "independent") -> Measurement:
    """Time ``calls`` optimisation steps (the first one a warm-up) of ``model`` on ``batch`` (a collated batch on the
    CPU) as the training loop runs them: checks, transfer, parameter draw, forward, loss, backward, Adam."""
    network = training_network(model, DistributedContext(), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))
    generator = torch.Generator(device="cpu").manual_seed(0)
    autocast = torch.autocast("cuda", enabled=False)
    model.train()

    def step() -> None:
        check_batch(batch, options)
        on_device = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                     for key, value in batch.items()}
        hyper = sample_training_hyperparams(batch["fixed"].shape[0], options.num_classes, options.regularizer,
                                            generator=generator, device=device, class_sampling=class_sampling)
        training_step(network, optimizer, on_device, hyper, spacing, options, autocast)

    return measure(step, device, calls)


def dry_run(ctx: StageContext) -> str:
    """Print the plan of the training run ``ctx`` (see :mod:`..plan`) after a few measured steps; return the
    dry run's result."""
    args = ctx.args
    steps, per_epoch = total_steps(args, len(ctx.train_set), ctx.distributed.world_size)
    batch = collate_pairs([ctx.train_set[i % len(ctx.train_set)] for i in range(args.batch_size)])
    spacing = common_spacing(batch["spacing"], f"--dataset {args.dataset}")
    options = LossOptions(args.regularizer, ctx.num_classes, f"{getattr(args, 'label_source', 'fixed')}_labels",
                          args.ncc_window)
    measured = measure_training_step(ctx.model, batch, options, spacing, ctx.device, args.lr,
                                     class_sampling=getattr(args, "class_sampling", "independent"))
    shape = "x".join(str(n) for n in ctx.model.config["inshape"])
    plan = Plan(f"train the {args.model_type} model")
    plan.add("data", f"--dataset {args.dataset} {args.data_root}, split {args.split!r}: {len(ctx.train_set)} pairs; "
                     f"validation: {len(ctx.val_set) if ctx.val_set is not None else 'none'}")
    plan.add("images", f"{len(ctx.spacing)}D {shape} voxels of {' x '.join(f'{s:g}' for s in ctx.spacing)} mm; "
                       f"classes {list(ctx.class_names)}")
    conditioning = getattr(ctx.model, "conditioning", None)
    plan.add("model", f"{count_parameters(ctx.model):,} parameters, {ctx.model.nb_hyp_params} regularization "
                      f"parameters ({args.regularizer}" + (f", conditioning {conditioning}" if ctx.num_classes > 1
                                                           and conditioning else "") + ")"
                      + (f", warm start from {args.init_from}" if getattr(args, "init_from", None) else ""))
    plan.add("steps", f"{steps} (batch {args.batch_size}, {per_epoch} steps per epoch), lr {args.lr:g} "
                      f"{args.lr_schedule}; validation every {args.val_every} steps")
    plan.add("device", f"{ctx.device}" + (f" ({torch.get_num_threads()} threads)" if ctx.device.type == "cpu" else ""))
    plan.add_measurement("training step", measured, steps, "step")
    plan.add("would write", f"{ctx.out}/: config.json, checkpoints/last.pt, best.pt, train_log.csv, train_curves.png")
    return plan.print()
