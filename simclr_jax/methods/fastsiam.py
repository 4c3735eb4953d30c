"""FastSiam (Pototzky, Sultan, Schmidt-Thieme 2022, "FastSiam: Resource-Efficient Self-supervised
Learning on a Single GPU"): SimSiam's networks on N views of each image (4 by default), each
view's prediction pulled towards the mean of the other views' stop-gradient projections, a target
that varies less than one view's, so a small batch trains stably. Recipe: configs/fastsiam.py.

    python -m simclr_jax.main --config=configs/fastsiam.py --config.num_views=4

With N views, p_i and z_i the prediction and projection of view i, and sg the stop-gradient:
loss = (1/N) sum_i -cos(p_i, sg(mean_{j != i} z_j)), each cosine averaged over the batch. At N = 2
it is SimSiam's symmetrised loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax.data import views as views_lib
from simclr_jax.methods.base import Field
from simclr_jax.methods.simsiam import SimSiam, negative_cosine


def at_least_two(value) -> str:
  return '' if int(value) == value and value >= 2 else 'use 2 views or more (the paper: 4)'


def fastsiam_loss(p, z):
  """The loss above from predictions and projections [N, B, D] of N views."""
  n = z.shape[0]
  others = (jnp.sum(z, axis=0, keepdims=True) - z) / (n - 1)  # view i's target: the others' mean
  return sum(negative_cosine(p[i], others[i]) for i in range(n)) / n


class FastSiam(SimSiam):
  NAME = 'fastsiam'
  PAPER = 'Pototzky, Sultan, Schmidt-Thieme 2022, FastSiam'
  FIELDS = {**SimSiam.FIELDS,
            'num_views': Field(4, at_least_two, defines_run=True,
                               doc="the views of each image (each predicts the mean of the others')"),
            'predictor_constant_lr': Field(False, doc='the predictor at the peak learning rate throughout')}

  def views(self, first, second) -> tuple:
    """num_views same-size views of every image, all with the first view's settings (the paper's
    and lightly's FastSiamTransform: one augmentation for every view)."""
    return (views_lib.Crops('global', 0, (first,) * self.config['num_views']),)

  def loss(self, model, out, state, views, step, params=None):
    z = jax.lax.stop_gradient(out['global']['projection'])
    return fastsiam_loss(out['global']['prediction'], z), state, {}


METHOD = FastSiam
