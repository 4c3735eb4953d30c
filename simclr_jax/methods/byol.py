"""BYOL (Grill et al. 2020): an online network with a predictor learns to predict an EMA target
network's projection of the other view; the symmetrised loss is 2 - 2 cos(prediction, target)
for each direction, summed (as solo-learn sums them). Recipe: configs/byol.py.
"""
from __future__ import annotations

import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.methods.base import Field, MomentumMethod, l2_normalize, layer_sizes


def regression(p, t):
  """Mean over the batch of 2 - 2 cos(p, t) (the squared distance of the normalised vectors)."""
  return jnp.mean(2 - 2 * jnp.sum(l2_normalize(p) * l2_normalize(t), axis=-1))


class BYOL(MomentumMethod):
  NAME = 'byol'
  PAPER = 'Grill et al. 2020, Bootstrap Your Own Latent'
  FIELDS = {**MomentumMethod.FIELDS,
            'predictor_dims': Field((4096, 256), layer_sizes, defines_run=True, doc="the predictor's layer sizes")}

  def projector(self, dtype):
    """Linear-BN-ReLU-Linear (the paper's MLP)."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, dtype=dtype)

  def predictor(self, dtype):
    return models.MLPHead(tuple(self.config['predictor_dims']), norm=True, dtype=dtype)

  def loss(self, model, out, state, views, step, params=None):
    targets, state = self.target_projections(model, state, views)
    p1, p2 = out['global']['prediction']
    t1, t2 = targets['global']
    return regression(p1, t2) + regression(p2, t1), state, {'tau': self.tau(step)}


METHOD = BYOL
