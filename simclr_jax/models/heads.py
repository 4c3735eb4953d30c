"""MLP heads: projectors and predictors of any depth, with or without BatchNorm.

    head = MLPHead((2048, 128))                                 # Dense-ReLU-Dense (SimCLR)
    head = MLPHead((512, 512, 128), norm=True, last_norm='scale', kernel_std=0.01)   # SimCLR v2
    out, hiddens = head.apply(variables, h, train=True)         # hiddens[K]: after layer K
    layers = head_layers(spec['projector'], 1, jnp.float32)     # a classifier's first K layers
    scores = Prototypes(3000).apply(variables, z)                # cosines with unit prototypes
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

class MLPHead(nn.Module):
  """Dense layers `dims`; ReLU after every layer but the last. With norm, each layer's Dense has
  no bias and is followed by BatchNorm (the last one by `last_norm`).

  last_norm: 'none' (a Dense with bias: SimCLR, BYOL), 'full' (BatchNorm as the other layers),
  'scale' (BatchNorm without centring, as SimCLR v2's last head layer) or 'plain' (BatchNorm
  without scale or centring: MoCo v3, SimSiam).
  Returns (output, hiddens): hiddens[k] is the output of layer k - 1 after its ReLU, hiddens[0]
  the input, so hiddens[K] is what fine-tuning from head layer K starts from.
  """
  dims: Sequence[int]
  norm: bool = False
  last_norm: str = 'none'
  dtype: Any = jnp.float32
  relu_last: bool = False     # the first K layers of a projector inside a classifier
  kernel_std: float = 0.0     # > 0: Dense kernels drawn from N(0, kernel_std^2); 0: Flax's default (LeCun normal)

  @nn.compact
  def __call__(self, h, train: bool = True):
    hiddens = [h]
    init = nn.initializers.normal(self.kernel_std) if self.kernel_std > 0 else nn.linear.default_kernel_init
    for i, d in enumerate(self.dims):
      last = i == len(self.dims) - 1
      kind = self.last_norm if last else ('full' if self.norm else 'none')
      h = nn.Dense(d, use_bias=kind == 'none', dtype=self.dtype, kernel_init=init, name=f'dense_{i}')(h)
      if kind != 'none':
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         use_bias=kind == 'full', use_scale=kind != 'plain', name=f'norm_{i}')(h)
      if not last or self.relu_last:
        h = nn.relu(h)
      hiddens.append(h.astype(jnp.float32))
    return h.astype(jnp.float32), hiddens



class Prototypes(nn.Module):
  """num prototypes as unit columns of a kernel: x [B, D] -> cos(x, prototype) [B, num], float32.
  The kernel is weight-normalised with its gain fixed at 1 (DINO's norm_last_layer, SwAV's
  prototypes: the prototypes stay on the unit sphere) and drawn from a truncated normal of
  deviation 0.02 (DINO's trunc_normal_)."""
  num: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.truncated_normal(0.02), (x.shape[-1], self.num), jnp.float32)
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x @ (kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), 1e-12))


def head_layers(spec: dict | None, k: int, dtype) -> MLPHead | None:
  """The first k layers of a projector described by spec ({'dims', 'norm', 'last_norm'}, as a
  checkpoint stores it), each followed by its ReLU; None for k = 0."""
  if not k:
    return None
  return MLPHead(tuple(spec['dims'][:k]), norm=spec['norm'], last_norm='full' if spec['norm'] else 'none',
                 relu_last=True, dtype=dtype)
