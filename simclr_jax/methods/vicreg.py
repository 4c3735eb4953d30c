"""VICReg (Bardes, Ponce, LeCun 2022, eq. 6): invariance (the mean squared distance of the two
views' projections), variance (a hinge keeping each dimension's deviation over the global batch
above 1) and covariance (the off-diagonal covariances pushed to 0), each regulariser applied to
both branches and summed as in the paper and solo-learn. Recipe: configs/vicreg.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.methods.base import Field, Method, non_negative


def variance(z, eps: float = 1e-4):
  std = jnp.sqrt(z.var(0, ddof=1) + eps)
  return jnp.mean(jax.nn.relu(1 - std))


def covariance(z):
  n, d = z.shape
  z = z - z.mean(0)
  cov = z.T @ z / (n - 1)
  return (jnp.sum(cov ** 2) - jnp.sum(jnp.diagonal(cov) ** 2)) / d


class VICReg(Method):
  NAME = 'vicreg'
  PAPER = 'Bardes, Ponce, LeCun 2022, VICReg'
  FIELDS = {**Method.FIELDS, 'sim_weight': Field(25.0, non_negative, doc="the invariance term's weight"),
            'var_weight': Field(25.0, non_negative, doc="the variance term's weight (summed over both branches)"),
            'cov_weight': Field(1.0, non_negative, doc="the covariance term's weight (summed over both branches)")}

  def projector(self, dtype):
    """Linear-BN-ReLU layers, the last a plain Linear (the paper's expander)."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, dtype=dtype)

  def loss(self, model, out, state, views, step, params=None):
    z1, z2 = (z.astype(jnp.float32) for z in out['global']['projection'])
    inv = jnp.mean((z1 - z2) ** 2)
    var = variance(z1) + variance(z2)
    cov = covariance(z1) + covariance(z2)
    c = self.config
    loss = c['sim_weight'] * inv + c['var_weight'] * var + c['cov_weight'] * cov
    return loss, state, {'invariance': inv, 'variance': var, 'covariance': cov}


METHOD = VICReg
