"""One optimisation step of the training loop, with its inputs checked once, at its boundary.

The batch is checked on the CPU before it goes to the device (:func:`check_batch`: finite images, labels in
``0..C-1``); the parameter vectors come from the sampler and are valid by construction. Inside the step the network
runs through :meth:`~...models.networks.HyperVxmDense.forward_unchecked` (wrapped by :func:`training_network`, also under
DistributedDataParallel) and the loss with ``validate=False``, so no check reads device data: the only
host-device synchronisation of a step is reading its three loss values, which the log and the NaN stop need.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from ...core.objective import registration_loss
from ...core.tensors import check_image
from ...models.networks import HyperVxmDense, Unchecked
from ...runtime import DistributedContext

__all__ = ["LossOptions", "check_batch", "training_network", "training_step"]


@dataclass(frozen=True)
class LossOptions:
    """The loss settings of a run: ``regularizer`` (elastic, diffusion), ``num_classes`` (1 for the global model),
    ``label_key`` (the batch key of the labels that make the spatial model's maps) and ``ncc_window`` (voxels)."""

    regularizer: str
    num_classes: int
    label_key: str
    ncc_window: int


def check_batch(batch: dict[str, Any], options: LossOptions) -> None:
    """Check a collated batch on the CPU: images ``[B, 1, *S]`` finite, and for a spatial model labels
    ``[B, 1, *S]`` with values ``0..C-1``. Raises ValueError naming the pairs."""
    pairs = batch.get("pair_id")
    for key in ("fixed", "moving"):
        try:
            check_image(batch[key], key, channels=1)
        except ValueError as error:
            raise ValueError(f"pairs {pairs}: {error}") from None
    if options.num_classes > 1:
        labels = batch[options.label_key]
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= options.num_classes:
            raise ValueError(f"pairs {pairs}: {options.label_key} must lie in 0..{options.num_classes - 1}, got "
                             f"values in {low}..{high}")


def training_network(model: HyperVxmDense, distributed: DistributedContext, device: torch.device) -> torch.nn.Module:
    """The module a training step calls: ``model.forward_unchecked`` (no data checks), in DistributedDataParallel when the
    run has several processes. Its parameters are the model's."""
    network = Unchecked(model)
    if distributed.enabled:
        network = DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None)
    return network


def training_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                  hyper: torch.Tensor, spacing: Sequence[float], options: LossOptions,
                  autocast: AbstractContextManager) -> tuple[float, float, float]:
    """Forward, loss, backward and optimizer step on a checked batch already on the device.

    ``hyper`` ``[B, P]`` on the device; ``spacing`` (mm) of the batch. A spatial model also gets the labels that
    make the Lame maps (models that do not need them ignore them). Returns ``(loss, similarity,
    regularization)`` as floats; when the loss is not finite the weights are left unchanged (the caller stops).
    """
    labels = batch.get(options.label_key) if options.num_classes > 1 else None
    with autocast:
        output = network(batch["moving"], batch["fixed"], hyper, labels)
    terms = registration_loss(batch["fixed"], output.warped.float(), output.velocity.float(), hyper,
                              regularizer=options.regularizer, num_classes=options.num_classes,
                              labels=batch.get(options.label_key), spacing=spacing, ncc_window=options.ncc_window,
                              validate=False)
    loss, similarity, regularization = torch.stack(list(terms)).tolist()  # the step's one device sync
    if loss == loss and abs(loss) != float("inf"):
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
    return loss, similarity, regularization
