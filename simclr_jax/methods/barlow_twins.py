"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' projections,
each standardised over the global batch, driven to the identity: sum (1 - C_ii)^2 + lambda *
sum_{i != j} C_ij^2, times the recipe's loss scale. Recipe: configs/barlow_twins.py.
"""
from __future__ import annotations

import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.methods.base import Field, Method, positive


def standardize(z, eps: float = 1e-5):
  """Each dimension to zero mean and unit variance over the batch (BatchNorm without affine)."""
  z = z.astype(jnp.float32)
  return (z - z.mean(0)) / jnp.sqrt(z.var(0) + eps)


def cross_correlation_loss(z1, z2, lambd: float):
  c = standardize(z1).T @ standardize(z2) / z1.shape[0]
  on = jnp.sum((1 - jnp.diagonal(c)) ** 2)
  off = jnp.sum(c ** 2) - jnp.sum(jnp.diagonal(c) ** 2)
  return on + lambd * off, on, off


class BarlowTwins(Method):
  NAME = 'barlow_twins'
  PAPER = 'Zbontar et al. 2021, Barlow Twins'
  FIELDS = {**Method.FIELDS, 'lambd': Field(0.0051, positive, doc='the weight of the off-diagonal terms'),
            'loss_scale': Field(0.1, positive, doc="the factor on the whole loss (solo-learn's scale_loss)")}

  def projector(self, dtype):
    """Linear-BN-ReLU layers, the last a plain Linear (the paper's projector)."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, dtype=dtype)

  def loss(self, model, out, state, views, step, params=None):
    z1, z2 = out['global']['projection']
    loss, on, off = cross_correlation_loss(z1, z2, self.config['lambd'])
    return self.config['loss_scale'] * loss, state, {'on_diagonal': on, 'off_diagonal': off}


METHOD = BarlowTwins
