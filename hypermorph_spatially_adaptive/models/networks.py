"""Registration networks: a VoxelMorph U-Net built from a pluggable conv block, and HyperMorph on top of it.

``HyperVxmDense`` (every U-Net conv a :class:`HyperConv` fed by a :class:`HyperNetwork`) and ``VxmDense``
(the same U-Net with plain convs, the baseline) share :class:`UNet` and the velocity -> displacement -> warp
head. Images ``[B, 1, *S]``; velocity and displacement ``[B, ndim, *S]`` in voxels on the fixed grid,
``warped(x) = moving(x + u(x))`` with ``u = exp(v)`` (scaling and squaring).
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.hyperparams import params_per_class
from ..core.tensors import all_finite, check_image
from ..core.transform import integrate_velocity, warp
from .checkpoints import ModelKind, kind_from_config, model_file, read_checkpoint, save_checkpoint
from .conditioning import (CONDITIONINGS, NEEDS_LABELS, class_fractions, class_parameter_sets, fraction_pyramid,
                           parameter_maps)
from .hypernetwork import LEAKY_SLOPE, HyperConv, HyperNetwork, conv_nd, kaiming_std

__all__ = ["RegistrationOutput", "PlainConv", "UNet", "VxmDense", "HyperVxmDense", "Unchecked", "spatial_from_global"]

PAD_MODES = ("replicate", "zeros")


class RegistrationOutput(NamedTuple):
    """What every registration network returns (fields in voxels on the fixed grid)."""

    warped: torch.Tensor        #: moving image resampled onto the fixed grid ``[B, 1, *S]``
    displacement: torch.Tensor  #: ``u = exp(v)`` ``[B, ndim, *S]``
    velocity: torch.Tensor      #: stationary velocity ``v`` ``[B, ndim, *S]`` (the regularizer acts on it)


class PlainConv(nn.Module):
    """Ordinary convolution with the conv-block interface ``forward(x, embedding=None)`` (embedding ignored).

    Kaiming-normal weights for LeakyReLU(0.2), zero bias, padding ``kernel_size // 2``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        conv_nd(ndim)
        self.ndim, self.stride, self.padding = ndim, stride, kernel_size // 2
        shape = (out_channels, in_channels) + (kernel_size,) * ndim
        self.weight = nn.Parameter(torch.randn(shape) * kaiming_std(in_channels * kernel_size ** ndim))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        return conv_nd(self.ndim)(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


#: A conv-block factory: ``(in_channels, out_channels) -> module`` with ``forward(x, embedding)``.
ConvFactory = Callable[[int, int], nn.Module]


class UNet(nn.Module):
    """VoxelMorph U-Net over any conv block; ``forward(x [B, Cin, *S], embedding) -> [B, out_channels, *S]``.

    Encoder level i: conv to ``enc_features[i]`` + LeakyReLU(0.2), keep as skip, 2x max-pool. Decoder, for the
    first ``len(enc_features)`` widths: conv + LeakyReLU, 2x nearest upsampling, concat the skip of the same
    resolution; the remaining decoder widths are extra full-resolution conv + LeakyReLU. Every spatial size must
    be divisible by ``2 ** len(enc_features)`` (:class:`VxmDense` pads to ensure it).
    """

    def __init__(self, ndim: int, in_channels: int, enc_features: Sequence[int], dec_features: Sequence[int],
                 conv: ConvFactory):
        super().__init__()
        conv_nd(ndim)
        enc, dec = [int(f) for f in enc_features], [int(f) for f in dec_features]
        if not enc or any(f < 1 for f in enc + dec):
            raise ValueError(f"enc_features must be a non-empty list of positive widths and dec_features positive, "
                             f"got {enc} and {dec}")
        if len(dec) < len(enc):
            raise ValueError(f"dec_features needs at least len(enc_features)={len(enc)} widths (one per level), "
                             f"got {len(dec)}: {dec}")
        self.ndim, self.levels = ndim, len(enc)
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        channels = in_channels
        for width in enc:
            self.encoder.append(conv(channels, width))
            channels = width
        for level, width in enumerate(dec):
            self.decoder.append(conv(channels, width))
            channels = width + (enc[self.levels - 1 - level] if level < self.levels else 0)
        self.out_channels = channels

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None,
                fractions: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``fractions`` (tissue-wise kernels): class fractions at every resolution, entry k ``[B, C, *S / 2^k]``
        (:func:`~.conditioning.fraction_pyramid`), passed to each block at its own resolution."""
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        skips = []

        def block_at(block: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
            if fractions is None:
                return F.leaky_relu(block(x, embedding), LEAKY_SLOPE)
            return F.leaky_relu(block(x, embedding, fractions[level]), LEAKY_SLOPE)

        for level, block in enumerate(self.encoder):
            x = block_at(block, x, level)
            skips.append(x)
            x = pool(x, 2)
        for level, block in enumerate(self.decoder):
            x = block_at(block, x, max(self.levels - level, 0))
            if level < self.levels:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = torch.cat([x, skips.pop()], dim=1)
        return x


def _pad_amounts(shape: Sequence[int], multiple: int) -> list[tuple[int, int]]:
    """Per axis ``(before, after)`` padding that makes each size a multiple of ``multiple`` (split evenly)."""
    out = []
    for n in shape:
        total = -n % multiple
        out.append((total // 2, total - total // 2))
    return out


def _pad(x: torch.Tensor, amounts: list[tuple[int, int]], mode: str) -> torch.Tensor:
    if not any(a or b for a, b in amounts):
        return x
    flat = [p for pair in reversed(amounts) for p in pair]  # F.pad lists the last axis first
    return F.pad(x, flat, mode="replicate" if mode == "replicate" else "constant")


def _crop(x: torch.Tensor, amounts: list[tuple[int, int]]) -> torch.Tensor:
    index = (slice(None), slice(None)) + tuple(slice(a, x.shape[2 + k] - b) for k, (a, b) in enumerate(amounts))
    return x[index]


class _Registration(nn.Module):
    """Shared parts: U-Net on ``cat(moving, fixed)``, padding, flow conv, integration, warping, save/load."""

    def __init__(self, inshape: Sequence[int], enc_features: Sequence[int], dec_features: Sequence[int],
                 int_steps: int, pad_mode: str, conv: ConvFactory, extra_channels: int = 0):
        super().__init__()
        shape = tuple(inshape) if isinstance(inshape, (list, tuple)) else ()
        if len(shape) not in (2, 3) or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                               and n > 0 for n in shape):
            raise ValueError(f"inshape must be a list of 2 or 3 positive ints, got {inshape!r}")
        shape = tuple(int(n) for n in shape)
        if isinstance(int_steps, bool) or not isinstance(int_steps, int) or int_steps < 0:
            raise ValueError(f"int_steps must be an int >= 0, got {int_steps!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.inshape, self.int_steps, self.pad_mode = shape, int_steps, pad_mode
        self.unet = UNet(len(shape), 2 + extra_channels, enc_features, dec_features, conv)
        self.flow = PlainConv(len(shape), self.unet.out_channels, len(shape))
        with torch.no_grad():
            # Near-zero velocity at the start, as in VoxelMorph.
            self.flow.weight.normal_(0.0, 1e-5)
            self.flow.bias.zero_()

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.inshape)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable): ``type(self)(**model.config)`` rebuilds the model."""
        return json.loads(json.dumps(self._config))  # a deep copy callers may modify

    def _check_pair(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        """Shapes and dtypes of the two images (free: no data is read)."""
        for name, image in (("moving", moving), ("fixed", fixed)):
            if not isinstance(image, torch.Tensor) or image.dim() != self.ndim + 2 or image.shape[1] != 1:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"{name} must have shape [B, 1, *S] with {self.ndim} spatial axes, got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"{name} must be a floating-point image, got dtype {image.dtype}")
        if moving.shape != fixed.shape:
            what = "batch sizes" if moving.shape[0] != fixed.shape[0] else "shapes"
            raise ValueError(f"moving and fixed must have the same shape [B, 1, *S]; their {what} differ: "
                             f"moving {tuple(moving.shape)}, fixed {tuple(fixed.shape)}")

    @staticmethod
    def _check_finite(moving: torch.Tensor, fixed: torch.Tensor) -> None:
        """The images' values (reads the data: a host-device synchronisation on a GPU)."""
        for name, image in (("moving", moving), ("fixed", fixed)):
            check_image(image, name, channels=1)

    def _register(self, moving: torch.Tensor, fixed: torch.Tensor, embedding: torch.Tensor | None,
                  extra: torch.Tensor | None = None, fractions: torch.Tensor | None = None) -> RegistrationOutput:
        """``extra``: more input channels ``[B, k, *S]``; ``fractions``: class fractions ``[B, C, *S]`` for
        tissue-wise kernels. Both are padded by repeating their edges."""
        amounts = _pad_amounts(moving.shape[2:], 2 ** self.unet.levels)
        x = _pad(torch.cat([moving, fixed], dim=1), amounts, self.pad_mode)
        if extra is not None:
            x = torch.cat([x, _pad(extra.to(x.dtype), amounts, "replicate")], dim=1)
        pyramid = None
        if fractions is not None:
            pyramid = fraction_pyramid(_pad(fractions, amounts, "replicate"), self.unet.levels)
        velocity = _crop(self.flow(self.unet(x, embedding, pyramid)), amounts)
        displacement = integrate_velocity(velocity, self.int_steps)
        return RegistrationOutput(warp(moving, displacement), displacement, velocity)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file of :func:`~.checkpoints.model_file` (``format``, ``model_config`` with the model
        kind, ``model_state``) to ``path`` atomically (temp file + os.replace)."""
        save_checkpoint(model_file(self), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu"):
        """Rebuild a model from a :meth:`save` file or a training checkpoint (a dict holding at least
        ``model_config`` and ``model_state``). The model is moved to ``map_location`` when that names a device.

        Loads with ``weights_only=True`` (see :func:`~.checkpoints.read_checkpoint`); bad files raise ValueError.
        """
        return cls.from_checkpoint(read_checkpoint(path, map_location), source=os.fspath(path),
                                   map_location=map_location)

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], source: str = "checkpoint", map_location="cpu"):
        """Rebuild a model from a checkpoint dict already read by :func:`~.checkpoints.read_checkpoint`."""
        config = dict(payload["model_config"])
        try:
            with torch.device("meta"):  # shapes only: a config asking for an absurd size allocates nothing
                skeleton = cls(**config)
        except TypeError as error:
            raise ValueError(f"{source}: 'model_config' does not fit {cls.__name__}: {error}") from error
        _check_state_shapes(skeleton, payload["model_state"], source)
        model = cls(**config)
        try:
            model.load_state_dict(payload["model_state"])
        except RuntimeError as error:
            raise ValueError(f"{source}: 'model_state' does not match 'model_config': {error}") from error
        if isinstance(map_location, (str, torch.device)):
            model.to(map_location)
        return model


def _check_state_shapes(skeleton: nn.Module, state: Any, source: str) -> None:
    """ValueError, naming the first mismatches, when ``state`` does not hold the tensors of ``skeleton``'s shapes."""
    expected = {name: tuple(value.shape) for name, value in skeleton.state_dict().items()}
    if not isinstance(state, dict):
        raise ValueError(f"{source}: 'model_state' must be a state dict, got {type(state).__name__}")
    found = {name: tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
             for name, value in state.items()}
    problems = [f"{name} missing" for name in expected if name not in found]
    problems += [f"{name} unexpected" for name in found if name not in expected]
    problems += [f"{name} {list(found[name]) if isinstance(found[name], tuple) else found[name]} instead of "
                 f"{list(shape)}" for name, shape in expected.items() if name in found and found[name] != shape]
    if problems:
        raise ValueError(f"{source}: 'model_state' does not match 'model_config' ({len(problems)} tensor(s): "
                         f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''})")


class VxmDense(_Registration):
    """VoxelMorph (plain U-Net) baseline: ``model(moving, fixed) -> RegistrationOutput``; shares all code with
    :class:`HyperVxmDense` except the conv blocks."""

    def __init__(self, inshape: Sequence[int], enc_features: Sequence[int] = (16, 32, 32, 32),
                 dec_features: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), int_steps: int = 7,
                 pad_mode: str = "replicate"):
        ndim = len(inshape) if isinstance(inshape, (list, tuple)) else 0
        super().__init__(inshape, enc_features, dec_features, int_steps, pad_mode,
                         conv=lambda cin, cout: PlainConv(ndim, cin, cout))
        self._config = {"inshape": list(self.inshape), "enc_features": [int(f) for f in enc_features],
                        "dec_features": [int(f) for f in dec_features], "int_steps": int_steps,
                        "pad_mode": pad_mode}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """moving, fixed ``[B, 1, *S]`` -> ``RegistrationOutput(warped, displacement, velocity)``; inputs checked."""
        self._check_pair(moving, fixed)
        self._check_finite(moving, fixed)
        return self._register(moving, fixed, None)

    def forward_unchecked(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """:meth:`forward` without the checks that read the data (shapes are still checked), for callers that
        checked their inputs once."""
        self._check_pair(moving, fixed)
        return self._register(moving, fixed, None)


class HyperVxmDense(_Registration):
    """HyperMorph: a VoxelMorph U-Net whose every conv kernel is generated from a parameter vector.

    ``model(moving [B, 1, *S], fixed [B, 1, *S], hyper [B, P]) -> RegistrationOutput(warped, displacement,
    velocity)``; P = ``nb_hyp_params`` (2 for the global model ``[lam, mu]``, 2C for the spatial one). The
    vector's layout is part of the config: ``regularizer`` (``elastic``: ``lam, mu`` per class, all lambdas first;
    ``diffusion``: one weight per class) and ``class_names`` (the spatial model's classes; for a global model the
    training data's, optional), read back as :attr:`kind` and stored in every file (:mod:`.checkpoints`). ``hyper``
    goes through a :class:`HyperNetwork` (``hyper_layers`` x ``hyper_units``, ReLU) to an embedding that feeds
    every :class:`HyperConv` of the U-Net; the final flow conv (ndim channels, kernel 3, ~N(0, 1e-5)) is plain.
    ``u = exp(v)`` by ``int_steps`` scaling-and-squaring steps (0: ``u = v``).

    A spatial model's ``conditioning`` says how the per-class values reach their voxels
    (:mod:`.conditioning`): ``vector`` (the paper: kernels from the whole vector, shared by every voxel), ``maps``
    (plus the voxelwise parameter maps as input channels) or ``tissue`` (each voxel convolved with kernels generated
    from its own class's values). ``maps`` and ``tissue`` take the fixed labels ``labels`` ``[B or 1, 1, *S]``
    (int64, ``0..C-1``) in every call (:attr:`needs_labels`); ``vector`` models ignore them.

    Any spatial size with ``len(inshape)`` axes is accepted: sizes not divisible by ``2 ** len(enc_features)``
    are padded (``pad_mode="replicate"`` repeats the edge voxels, ``"zeros"`` pads with 0; split evenly before
    and after) and the velocity is cropped back before integration. ``inshape`` is the nominal training shape,
    kept in the config. When every row of ``hyper`` is identical, one kernel per layer is generated and applied
    to the whole batch (a plain conv, same result as the grouped path); a ``tissue`` model whose classes share
    one parameter set runs as the global model does (one kernel per layer, no blending).
    """

    def __init__(self, inshape: Sequence[int], nb_hyp_params: int, enc_features: Sequence[int] = (16, 32, 32, 32),
                 dec_features: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), int_steps: int = 7,
                 hyper_layers: int = 6, hyper_units: int = 128, pad_mode: str = "replicate",
                 regularizer: str = "elastic", class_names: Sequence[str] | None = None,
                 conditioning: str = "vector"):
        ndim = len(inshape) if isinstance(inshape, (list, tuple)) else 0
        layout = {"nb_hyp_params": nb_hyp_params, "regularizer": regularizer,
                  "class_names": None if class_names is None else [str(name) for name in class_names]}
        HyperNetwork(nb_hyp_params, hyper_layers, hyper_units)  # validates its arguments first
        kind = kind_from_config(layout)  # validates the parameter layout
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if conditioning != "vector" and kind.model_type != "spatial":
            raise ValueError(f"conditioning {conditioning!r} is for spatial models (one parameter set per class); "
                             f"a global model (nb_hyp_params {nb_hyp_params}) uses 'vector'")
        per_class = params_per_class(regularizer)
        super().__init__(inshape, enc_features, dec_features, int_steps, pad_mode,
                         conv=partial(_hyper_block, ndim, hyper_units),
                         extra_channels=per_class if conditioning == "maps" else 0)
        self.hypernetwork = HyperNetwork(per_class if conditioning == "tissue" else nb_hyp_params, hyper_layers,
                                         hyper_units)
        self.conditioning, self.num_classes = conditioning, nb_hyp_params // per_class
        self._config = {"inshape": list(self.inshape), **layout,
                        "enc_features": [int(f) for f in enc_features],
                        "dec_features": [int(f) for f in dec_features], "int_steps": int_steps,
                        "hyper_layers": hyper_layers, "hyper_units": hyper_units, "pad_mode": pad_mode,
                        "conditioning": conditioning}

    @property
    def nb_hyp_params(self) -> int:
        """Length P of the parameter vector."""
        return self._config["nb_hyp_params"]

    @property
    def needs_labels(self) -> bool:
        """Whether every call needs the fixed labels (``maps`` and ``tissue`` conditioning)."""
        return self.conditioning in NEEDS_LABELS

    @property
    def kind(self) -> ModelKind:
        """How the model reads its parameter vector: model type, regularizer, class names."""
        return kind_from_config(self._config)

    def embed(self, hyper: torch.Tensor) -> torch.Tensor:
        """Hypernetwork embedding ``[B, hyper_units]``, or ``[1, hyper_units]`` when all rows of hyper are equal."""
        if hyper.shape[0] > 1 and bool((hyper == hyper[:1]).all()):
            hyper = hyper[:1]
        return self.hypernetwork(hyper)

    def _check_labels(self, labels: torch.Tensor | None, moving: torch.Tensor, values: bool) -> None:
        if not self.needs_labels:
            return
        if labels is None:
            raise ValueError(f"this model (conditioning {self.conditioning!r}) needs the fixed image's labels "
                             f"[B, 1, *S] in every call; none were given")
        expected = (moving.shape[0], 1, *moving.shape[2:])
        if not isinstance(labels, torch.Tensor) or labels.dim() != moving.dim() \
                or labels.shape[0] not in (1, expected[0]) or tuple(labels.shape[1:]) != expected[1:]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must have shape [B or 1, 1, *S] = {list(expected)}, got {shape}")
        if labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 class indices, got dtype {labels.dtype}")
        if values and labels.numel():
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (the model's "
                                 f"{self.num_classes} classes), got values in {low}..{high}")

    def _check_hyper(self, hyper: torch.Tensor, batch: int) -> None:
        P = self.nb_hyp_params
        if not isinstance(hyper, torch.Tensor) or hyper.dim() != 2 or hyper.shape[1] != P:
            shape = tuple(hyper.shape) if isinstance(hyper, torch.Tensor) else type(hyper).__name__
            raise ValueError(f"hyper must have shape [B, P] with P={P} (the model's nb_hyp_params), got {shape}")
        if hyper.shape[0] != batch:
            raise ValueError(f"hyper batch size must equal the image batch size {batch}, "
                             f"got hyper of shape {tuple(hyper.shape)}")
        if not hyper.is_floating_point():
            raise ValueError(f"hyper must be a finite floating-point tensor, got dtype {hyper.dtype}")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, hyper: torch.Tensor,
                labels: torch.Tensor | None = None) -> RegistrationOutput:
        """moving, fixed ``[B, 1, *S]``, hyper ``[B, P]``, labels ``[B or 1, 1, *S]`` (the fixed labels; needed by
        ``maps`` and ``tissue`` models) -> ``RegistrationOutput(warped, displacement, velocity)``.

        Checks shapes, dtypes and values (finite images and parameters, labels in range: reading them is a
        host-device synchronisation on a GPU). A caller that checked its inputs once (the training step, the grid
        scoring of identification) runs :meth:`register` instead.
        """
        self._check_pair(moving, fixed)
        self._check_hyper(hyper, moving.shape[0])
        self._check_labels(labels, moving, values=True)
        self._check_finite(moving, fixed)
        if not all_finite(hyper):
            raise ValueError("hyper must be a finite floating-point tensor (no NaN or infinity)")
        return self._conditioned(moving, fixed, hyper, labels)

    def forward_unchecked(self, moving: torch.Tensor, fixed: torch.Tensor, hyper: torch.Tensor,
                          labels: torch.Tensor | None = None) -> RegistrationOutput:
        """:meth:`forward` without the checks that read the data: shapes and dtypes are still checked."""
        self._check_pair(moving, fixed)
        self._check_hyper(hyper, moving.shape[0])
        self._check_labels(labels, moving, values=False)
        return self._conditioned(moving, fixed, hyper, labels)

    def _conditioned(self, moving: torch.Tensor, fixed: torch.Tensor, hyper: torch.Tensor,
                     labels: torch.Tensor | None) -> RegistrationOutput:
        hyper = hyper.to(moving.dtype)
        if self.conditioning == "vector":
            return self._register(moving, fixed, self.embed(hyper))
        if self.conditioning == "maps":
            maps = parameter_maps(hyper, labels, self.num_classes)
            return self._register(moving, fixed, self.embed(hyper), extra=maps)
        sets = class_parameter_sets(hyper, self.num_classes)  # [B, C, k]
        # Both shortcuts read from one host-device synchronisation.
        same_rows, same_classes = torch.stack([(hyper == hyper[:1]).all(), (sets == sets[:, :1]).all()]).tolist()
        if same_rows:
            sets = sets[:1]
        if same_classes:
            # Every class has the same values: one kernel per layer, exactly the global model's computation.
            return self._register(moving, fixed, self.hypernetwork(sets[:, 0]))
        batch_labels = labels.expand(moving.shape[0], *labels.shape[1:])
        fractions = class_fractions(batch_labels, self.num_classes, moving.dtype)
        return self._register(moving, fixed, self.hypernetwork(sets.reshape(-1, sets.shape[-1])),
                              fractions=fractions)


class Unchecked(nn.Module):
    """A model's :meth:`~HyperVxmDense.forward_unchecked` as a module's forward, so that a wrapper that calls
    ``forward`` (DistributedDataParallel) runs the network without the data checks. Holds no parameters of its own: its
    ``state_dict`` is the model's with the prefix ``model.``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor | None) -> RegistrationOutput:
        return self.model.forward_unchecked(*inputs)


def _hyper_block(ndim: int, embedding_size: int, in_channels: int, out_channels: int) -> HyperConv:
    return HyperConv(ndim, in_channels, out_channels, embedding_size)


def spatial_from_global(global_model: HyperVxmDense, num_classes: int,
                        class_names: Sequence[str] | None = None, conditioning: str = "vector") -> HyperVxmDense:
    """A spatially adaptive elastic model (P = 2C) that starts as a copy of the global elastic model (P = 2):
    a vector whose classes share one ``(lam, mu)`` gives exactly the global model's output (a warm start; the
    paper trains the spatial model from scratch). ``class_names`` (default: the global model's, when it records C
    of them) name the C classes.

    ``vector`` and ``maps``: the first hypernetwork layer sees each class's lambda (and mu) with 1/C of the global
    weight, so the start sees only the class mean and training has to learn how the tissues differ; the extra
    input channels of ``maps`` start with zero kernels. ``tissue``: the global model's weights unchanged (the
    hypernetwork already takes one class's ``(lam, mu)``), so each tissue starts with exactly the global model's
    kernels for its own values.
    """
    kind = global_model.kind
    if (kind.model_type, kind.regularizer) != ("global", "elastic"):
        raise ValueError(f"global_model must be the global elastic model (P = 2, [lam, mu]), got a "
                         f"{kind.model_type} {kind.regularizer} model with nb_hyp_params {global_model.nb_hyp_params}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if class_names is None and len(kind.class_names) == num_classes:
        class_names = kind.class_names
    config = {**global_model.config, "nb_hyp_params": 2 * num_classes,
              "class_names": None if class_names is None else list(class_names), "conditioning": conditioning}
    model = HyperVxmDense(**config)
    state = dict(global_model.state_dict())
    first = state["hypernetwork.layers.0.weight"]  # [units, 2]: columns lam, mu
    if conditioning != "tissue":
        state["hypernetwork.layers.0.weight"] = first.repeat_interleave(num_classes, dim=1) / num_classes
    if conditioning == "maps":
        for head in ("weight_head.weight", "weight_head.bias"):
            name = f"unet.encoder.0.{head}"
            state[name] = _with_zero_input_channels(state[name], model.unet.encoder[0])
    model.load_state_dict(state)
    return model.to(first.device)


def _with_zero_input_channels(head: torch.Tensor, conv: HyperConv) -> torch.Tensor:
    """A first-layer kernel head ``[..., Cout * 2 * k^d]`` (flattened kernels over the two image channels) widened
    to ``conv``'s input channels, the new channels' kernels zero."""
    kernels = head.reshape(*head.shape[:-1], conv.out_channels, 2, -1)
    wide = kernels.new_zeros(*kernels.shape[:-2], conv.in_channels, kernels.shape[-1])
    wide[..., :2, :] = kernels
    return wide.reshape(*head.shape[:-1], -1)
