"""MoCo v3 (Chen, Xie, He 2021): a predictor on the online branch, a momentum encoder and
projector, and a symmetrised InfoNCE of each view's prediction against the momentum keys of the
other view over the whole global batch, scaled by 2T as the authors' code does
(facebookresearch/moco-v3, moco/builder.py). Recipe: configs/mocov3.py.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

from simclr_jax import models
from simclr_jax.methods.base import Field, MomentumMethod, l2_normalize, layer_sizes, positive


def contrastive(q, k, temperature: float):
  """Cross-entropy of each query against every key of the batch (its own key the positive),
  times 2T."""
  logits = l2_normalize(q) @ l2_normalize(k).T / temperature
  labels = jnp.arange(q.shape[0])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() * 2 * temperature


class MoCoV3(MomentumMethod):
  NAME = 'mocov3'
  PAPER = 'Chen, Xie, He 2021, An Empirical Study of Training Self-Supervised Vision Transformers'
  FIELDS = {**MomentumMethod.FIELDS,
            'temperature': Field(0.2, positive,
                                 doc="InfoNCE's temperature (the loss is scaled by 2T, as the authors')"),
            'predictor_dims': Field((4096, 256), layer_sizes, defines_run=True, doc="the predictor's layer sizes")}

  def projector(self, dtype):
    """Linear-BN-ReLU-Linear-BN without affine (solo-learn's and the authors' ResNet head)."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, last_norm='plain', dtype=dtype)

  def predictor(self, dtype):
    return models.MLPHead(tuple(self.config['predictor_dims']), norm=True, dtype=dtype)

  def loss(self, model, out, state, views, step, params=None):
    keys, state = self.target_projections(model, state, views)
    q1, q2 = out['global']['prediction']
    k1, k2 = keys['global']
    t = self.config['temperature']
    return contrastive(q1, k2, t) + contrastive(q2, k1, t), state, {'tau': self.tau(step)}


METHOD = MoCoV3
