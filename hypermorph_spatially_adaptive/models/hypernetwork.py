"""Hypernetwork and hyper-convolution: conv kernels generated per sample from a parameter vector.

``HyperNetwork`` maps a parameter vector ``[B, P]`` to an embedding ``[B, E]``; every ``HyperConv`` turns that
embedding into its own kernel and bias through linear heads, so one network serves all parameter values
(HyperMorph, Hoopes et al. 2021). The functional core is :func:`hyper_conv`, and :func:`tissue_conv` for kernels
that differ between tissue classes (each voxel convolved with the kernels of its own class).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HyperNetwork", "HyperConv", "LinearHead", "hyper_conv", "tissue_conv", "conv_nd", "kaiming_std",
           "EMBEDDING_SECOND_MOMENT"]

#: Slope of the LeakyReLU that follows every U-Net convolution; used for the Kaiming gain.
LEAKY_SLOPE = 0.2

#: Assumed mean square of one embedding unit at initialisation, used to scale the kernel heads. With Kaiming
#: (ReLU) weights and small biases, an MLP keeps the mean square of its input through its layers, and inputs in
#: [0, 1] drawn as by ``sample_hyperparams`` have a mean square near 1/3.
EMBEDDING_SECOND_MOMENT = 1.0 / 3.0


def conv_nd(ndim: int):
    """``F.conv2d`` or ``F.conv3d`` for ``ndim`` spatial axes."""
    if ndim == 2:
        return F.conv2d
    if ndim == 3:
        return F.conv3d
    raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")


def kaiming_std(fan_in: int, slope: float = LEAKY_SLOPE) -> float:
    """Standard deviation of a Kaiming-normal kernel for a LeakyReLU of ``slope``: ``sqrt(2 / ((1 + a^2) fan_in))``."""
    return math.sqrt(2.0 / ((1.0 + slope ** 2) * fan_in))


def hyper_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
               padding: int = 0) -> torch.Tensor:
    """Convolve each sample with its own kernel.

    x ``[B, Cin, *S]``; weight ``[B, Cout, Cin, *k]`` (or ``[1, Cout, Cin, *k]``: one kernel for every sample);
    bias ``[B, Cout]`` / ``[1, Cout]`` or None. Returns ``[B, Cout, *S']``. Distinct kernels run as a single
    grouped convolution with the batch folded into the channels (input ``[1, B*Cin, *S]``, weight
    ``[B*Cout, Cin, *k]``, ``groups=B``); a single kernel is a plain convolution.
    """
    ndim = x.dim() - 2
    conv = conv_nd(ndim)
    batch, cin = x.shape[:2]
    if weight.dim() != ndim + 3 or weight.shape[2] != cin or weight.shape[0] not in (1, batch):
        raise ValueError(f"weight must have shape [B={batch} or 1, Cout, Cin={cin}, *k] for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    cout = weight.shape[1]
    if bias is not None and (bias.dim() != 2 or bias.shape != (weight.shape[0], cout)):
        raise ValueError(f"bias must have shape [{weight.shape[0]}, {cout}], got {tuple(bias.shape)}")
    if weight.shape[0] == 1:
        return conv(x, weight[0], None if bias is None else bias[0], stride=stride, padding=padding)
    folded = x.reshape(1, batch * cin, *x.shape[2:])
    out = conv(folded, weight.reshape(batch * cout, cin, *weight.shape[3:]),
               None if bias is None else bias.reshape(batch * cout), stride=stride, padding=padding, groups=batch)
    return out.view(batch, cout, *out.shape[2:])


def tissue_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fractions: torch.Tensor,
                stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Convolve every voxel with the kernels of its own tissue class.

    x ``[B, Cin, *S]``; weight ``[N, C, Cout, Cin, *k]`` and bias ``[N, C, Cout]`` or None: one kernel per class,
    per sample (N = B) or shared by the batch (N = 1); fractions ``[B, C, *S']`` (``S'`` the output size): the
    share of each class at each output voxel (one-hot labels, or their averages on a coarser grid; they sum to 1).
    Returns ``sum_c fractions[:, c] * (conv(x, weight[:, c]) + bias[:, c])`` ``[B, Cout, *S']``: a convolution
    whose kernel at voxel x is ``sum_c fractions_c(x) weight_c``. The C convolutions run as one with C * Cout
    output channels.
    """
    n, classes, cout = weight.shape[:3]
    if fractions.dim() != x.dim() or fractions.shape[:2] != (x.shape[0], classes):
        raise ValueError(f"fractions must have shape [B={x.shape[0]}, C={classes}, *S], got "
                         f"{tuple(fractions.shape)}")
    stacked = weight.reshape(n, classes * cout, *weight.shape[3:])
    out = hyper_conv(x, stacked, None if bias is None else bias.reshape(n, classes * cout), stride, padding)
    out = out.view(out.shape[0], classes, cout, *out.shape[2:])
    return (out * fractions.unsqueeze(2)).sum(1)


class HyperNetwork(nn.Module):
    """MLP ``[B, P] -> [B, units]``: ``layers`` linear layers, each followed by ReLU.

    Weights are Kaiming-normal for ReLU (the embedding keeps roughly the mean square of the input, see
    :data:`EMBEDDING_SECOND_MOMENT`); biases use PyTorch's default uniform init, so that the all-zero vector
    (no regularization) does not give an all-zero embedding.
    """

    def __init__(self, nb_hyp_params: int, layers: int = 6, units: int = 128):
        super().__init__()
        for name, value in (("nb_hyp_params", nb_hyp_params), ("layers", layers), ("units", units)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.nb_hyp_params, self.units = nb_hyp_params, units
        sizes = [nb_hyp_params] + [units] * layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")

    def forward(self, hyper: torch.Tensor) -> torch.Tensor:
        """hyper ``[B, P]`` -> embedding ``[B, units]`` (non-negative)."""
        if hyper.dim() != 2 or hyper.shape[1] != self.nb_hyp_params:
            raise ValueError(f"hyper must have shape [B, {self.nb_hyp_params}], got {tuple(hyper.shape)}")
        x = hyper
        for layer in self.layers:
            x = F.relu(layer(x))
        return x


class LinearHead(nn.Module):
    """Linear map ``[N, E] -> [N, out_features]``: ``embedding @ weight + bias``, ``weight`` stored ``[E, out]``.

    The transpose of ``nn.Linear``'s layout: the kernel heads hold nearly all of a HyperMorph model's parameters
    and every forward pass reads all of them, which this layout does in memory order (about 3x faster for one
    embedding on CPU, see ``benchmarks/bench_model.py``). Parameters start at zero; :class:`HyperConv` sets them.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, embedding, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class HyperConv(nn.Module):
    """Convolution whose kernel and bias are linear functions of a hypernetwork embedding (wraps :func:`hyper_conv`).

    ``forward(x [B, Cin, *S], embedding [B, E] or [1, E]) -> [B, Cout, *S']`` with padding ``kernel_size // 2``
    (same size for stride 1). An embedding with one row applies one kernel to the whole batch. With ``fractions``
    ``[B, C, *S']`` the embedding holds one row per class (``[N * C, E]``, class fastest, N = B or 1) and every voxel
    is convolved with its own class's kernels (:func:`tissue_conv`).

    Initialisation: the generated kernel ``W e + b`` should start with the variance of a Kaiming-normal kernel
    for LeakyReLU(0.2), ``s^2 = 2 / (1.04 fan_in)``. Half of it comes from the head bias ``b`` (a Kaiming kernel
    scaled by sqrt(1/2), shared by all parameter values) and half from ``W e`` (``W ~ N(0, s^2 / (2 E m2))``,
    m2 = :data:`EMBEDDING_SECOND_MOMENT`), which makes the kernels depend on the parameters from the start.
    The generated conv bias starts at zero (its head is zero-initialised) and is learned.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, embedding_size: int,
                 kernel_size: int = 3, stride: int = 1):
        super().__init__()
        conv_nd(ndim)  # validates ndim
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("embedding_size", embedding_size), ("kernel_size", kernel_size), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (centred 'same' padding), got {kernel_size}")
        self.ndim, self.in_channels, self.out_channels = ndim, in_channels, out_channels
        self.embedding_size, self.kernel_size, self.stride = embedding_size, kernel_size, stride
        self.kernel_shape = (out_channels, in_channels) + (kernel_size,) * ndim
        numel = math.prod(self.kernel_shape)
        self.weight_head = LinearHead(embedding_size, numel)
        self.bias_head = LinearHead(embedding_size, out_channels)
        std = kaiming_std(in_channels * kernel_size ** ndim)
        with torch.no_grad():
            self.weight_head.weight.normal_(0.0, std / math.sqrt(2.0 * embedding_size * EMBEDDING_SECOND_MOMENT))
            self.weight_head.bias.normal_(0.0, std / math.sqrt(2.0))

    def generate(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernels ``[N, Cout, Cin, *k]`` and biases ``[N, Cout]`` for an embedding ``[N, E]``."""
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_size:
            raise ValueError(f"embedding must have shape [B, {self.embedding_size}], got {tuple(embedding.shape)}")
        weight = self.weight_head(embedding).view(embedding.shape[0], *self.kernel_shape)
        return weight, self.bias_head(embedding)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor,
                fractions: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, *S] with {self.ndim} spatial axes, "
                             f"got {tuple(x.shape)}")
        classes = 1 if fractions is None else fractions.shape[1]
        if embedding.shape[0] not in (classes, x.shape[0] * classes):
            expected = (f"1 or B={x.shape[0]} rows" if fractions is None else
                        f"C={classes} or B x C = {x.shape[0] * classes} rows (one per sample and class)")
            raise ValueError(f"embedding must have {expected}, got shape {tuple(embedding.shape)}")
        weight, bias = self.generate(embedding)
        padding = self.kernel_size // 2
        if fractions is None:
            return hyper_conv(x, weight, bias, stride=self.stride, padding=padding)
        rows = embedding.shape[0] // classes
        return tissue_conv(x, weight.view(rows, classes, *self.kernel_shape), bias.view(rows, classes, -1),
                           fractions, stride=self.stride, padding=padding)

    def extra_repr(self) -> str:
        return (f"ndim={self.ndim}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"embedding_size={self.embedding_size}, kernel_size={self.kernel_size}, stride={self.stride}")
