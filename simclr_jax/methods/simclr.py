"""SimCLR (Chen et al. 2020): NT-Xent over the projections of both views of the global batch.

    configs/pretrain.py (the PyTorch write-up's recipe), configs/pretrain_v2.py (SimCLR v2's head)
    loss = nt_xent(z1, z2, temperature=0.5)   # z1[k] and z2[k]: the two views of image k
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from simclr_jax import models
from simclr_jax.methods.base import Field, Method, positive

_MASKED = -1e9  # finite, so no -inf reaches the softmax or a NaN check


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float = 0.5, clamp_similarity: bool = False) -> jax.Array:
  """Mean NT-Xent over all 2N projections, computed in float32.

  Args:
    z1, z2: [N, D] projections of the two views; z1[k]'s positive is z2[k] and the reverse, every
      other projection of the batch a negative.
    temperature: divides the cosine similarities.
    clamp_similarity: clamp similarities at 1e-7 before scaling, as the PyTorch
      write-up's code does. This zeroes the gradient of every negative pair whose
      similarity is negative, so it is off by default.
  """
  z = jnp.stack([z1, z2], axis=1).reshape((-1, z1.shape[-1])).astype(jnp.float32)  # rows 2k, 2k + 1: image k
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  sim = z @ z.T
  if clamp_similarity:
    sim = jnp.maximum(sim, 1e-7)
  logits = sim / temperature
  n = z.shape[0]
  logits = jnp.where(jnp.eye(n, dtype=bool), _MASKED, logits)
  targets = jnp.arange(n) ^ 1
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


class SimCLR(Method):
  NAME = 'simclr'
  PAPER = 'Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations'
  FIELDS = {**Method.FIELDS, 'temperature': Field(0.5, positive, doc="NT-Xent's temperature"),
            'clamp_similarity': Field(False,
                                      doc='clamp cosine similarities at 1e-7 before the temperature, as the PyTorch '
                                          'write-up does (it removes the gradient of negatively similar pairs)'),
            'projector_norm': Field(False, defines_run=True,
                                    doc="SimCLR v2's head: BatchNorm after each layer (the last without bias and "
                                        "centring)")}
  PER_VIEW_BATCHNORM = False  # both views as one batch, as the PyTorch reference and google-research/simclr

  def projector(self, dtype) -> models.MLPHead:
    """Dense-ReLU-...-Dense (the write-up, PyTorch's default initialisation as Flax's), or with
    projector_norm SimCLR v2's head: each layer's Dense without bias and its kernel drawn from
    N(0, 0.01^2) (google-research/simclr, tf2/model.py's LinearLayer: RandomNormal(stddev=0.01)),
    then BatchNorm (the last one without centring), ReLU between layers."""
    norm = self.config['projector_norm']
    return models.MLPHead(tuple(self.config['projection_dims']), norm=norm,
                          last_norm='scale' if norm else 'none', dtype=dtype, kernel_std=0.01 if norm else 0.0)

  def loss(self, model, out, state, views, step, params=None):
    z1, z2 = out['global']['projection']
    return nt_xent(z1, z2, self.config['temperature'], self.config['clamp_similarity']), state, {}


METHOD = SimCLR
