"""The functional core: pure tensor functions and the modules that hold their settings.

Modules: :mod:`.tensors` (input checks, loss reduction), :mod:`.transform` (warp, integrate, compose, sampling at
points), :mod:`.losses` (NCC, MSE), :mod:`.hyperparams` (parameter vectors and their layout), :mod:`.kernels`
(fused autograd ops), :mod:`.regularizers` (elastic and diffusion energies, Lame maps), :mod:`.metrics` (Dice,
HD95, TRE, Jacobian determinant) and :mod:`.objective` (the training loss and parameter samplers).

Conventions: images ``[B, C, *S]``, fields ``[B, ndim, *S]`` in voxels with channel k along array axis k, defined
on the fixed grid and pointing into the moving image; spacing in mm. The core imports only :mod:`..files` and
:mod:`..runtime` below it.
"""
__all__: list[str] = []
