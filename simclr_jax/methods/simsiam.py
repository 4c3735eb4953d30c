"""SimSiam (Chen & He 2021): a predictor on one branch and a stop-gradient on the other, the
negative cosine similarity averaged over both directions; no negatives, no momentum network.
Recipe: configs/simsiam.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.methods.base import Field, Group, Method, l2_normalize, layer_sizes


def negative_cosine(p, z):
  """-cos(p, stop_gradient(z)) averaged over the batch."""
  return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(jax.lax.stop_gradient(z)), axis=-1))


class SimSiam(Method):
  NAME = 'simsiam'
  PAPER = 'Chen, He 2021, Exploring Simple Siamese Representation Learning'
  FIELDS = {**Method.FIELDS,
            'predictor_dims': Field((512, 2048), layer_sizes, defines_run=True,
                                    doc="the predictor's layer sizes (a bottleneck)"),
            'predictor_constant_lr': Field(True,
                                           doc="the predictor at the peak learning rate throughout (the paper's "
                                               "section 4.4)")}

  def projector(self, dtype):
    """Three Linear-BN layers, ReLU between them, the last BN without affine (the paper's
    CIFAR head and solo-learn's)."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, last_norm='plain', dtype=dtype)

  def predictor(self, dtype):
    """Linear-BN-ReLU-Linear: the 2048-512-2048 bottleneck."""
    return models.MLPHead(tuple(self.config['predictor_dims']), norm=True, dtype=dtype)

  def param_groups(self) -> dict:
    """The predictor at a constant learning rate (the paper's section 4.4: better than decaying
    it; solo-learn's static_lr)."""
    return {'predictor': Group(constant_lr=True)} if self.config['predictor_constant_lr'] else {}

  def loss(self, model, out, state, views, step, params=None):
    p1, p2 = out['global']['prediction']
    z1, z2 = out['global']['projection']
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1), state, {}


METHOD = SimSiam
