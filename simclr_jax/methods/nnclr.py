"""NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations"): contrastive learning whose positive for a view is not the
other view of its image but the nearest neighbour of its projection in a support set, a queue of
the projections of past batches, so the positives vary more than augmentation alone makes them.
Recipe: configs/nnclr.py.

    python -m simclr_jax.main --config=configs/nnclr.py --config.queue_size=65536

With z1, z2 the normalised projections of an image's two views, p1, p2 their predictions
(normalised), NN(z) the support-set row of largest cosine with z, and T the temperature, the loss
of one direction is the mean over images i of
    -log exp(NN(z1_i) . p2_i / T) / sum_k exp(NN(z1_i) . p2_k / T)
(the denominator over the other view's predictions of the global batch; the paper's Eq. 2 with
the predictor of its section 4.4), and the loss is the mean of both directions. No gradient
reaches the support set. After the loss the global batch's first-view projections replace the
oldest rows of the support set (first in, first out, in the global batch's order on any number of
devices); it starts as unit vectors drawn from a fixed key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from simclr_jax import models
from simclr_jax.methods.base import (Field, Method, check_queue_size, enqueue, fifo_queue, l2_normalize, layer_sizes,
                                     positive)


def nearest_neighbours(z, support):
  """The support set's rows [B, D] nearest (in cosine) to each normalised z [B, D]; the support
  set's rows are unit vectors."""
  return support[jnp.argmax(z @ support.T, axis=-1)]


def nnclr_loss(anchors, predictions, temperature: float):
  """Mean cross-entropy of each anchor [B, D] picking its own image's prediction [B, D] among the
  batch's (both L2-normalised), in float32."""
  logits = (anchors @ predictions.T).astype(jnp.float32) / temperature
  return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(logits.shape[0])).mean()


class NNCLR(Method):
  NAME = 'nnclr'
  PAPER = 'Dwibedi et al. 2021, With a Little Help from My Friends (NNCLR)'
  FIELDS = {**Method.FIELDS, 'projection_dims': Field((2048, 2048, 256), layer_sizes, defines_run=True),
            'predictor_dims': Field((4096, 256), layer_sizes, defines_run=True, doc="the predictor's layer sizes"),
            'temperature': Field(0.2, positive, doc="InfoNCE's temperature"),
            'queue_size': Field(65536, positive, defines_run=True,
                                doc="the support set's rows (a multiple of batch_size; full after queue_size / "
                                    "batch_size steps)")}

  @classmethod
  def cross_check(cls, config) -> None:
    super().cross_check(config)
    check_queue_size(config)

  def projector(self, dtype):
    """Linear-BN-ReLU ... Linear-BN (solo-learn's NNCLR projector, BatchNorm on the output too)."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, last_norm='full', dtype=dtype)

  def predictor(self, dtype):
    """Linear-BN-ReLU-Linear."""
    return models.MLPHead(tuple(self.config['predictor_dims']), norm=True, dtype=dtype)

  def queue(self):
    return fifo_queue(self.config['queue_size'], self.batch_size)

  def init_state(self, variables: dict) -> dict:
    dims = self.config['projection_dims'][-1]
    support = l2_normalize(jax.random.normal(jax.random.PRNGKey(0), (self.config['queue_size'], dims)))
    return {'support': support, 'support_pointer': jnp.zeros((), jnp.int32)}

  def loss(self, model, out, state, views, step, params=None):
    z1, z2 = jax.lax.stop_gradient(l2_normalize(out['global']['projection']))
    p1, p2 = l2_normalize(out['global']['prediction'])
    support, t = state['support'], self.config['temperature']
    loss = (nnclr_loss(nearest_neighbours(z1, support), p2, t) + nnclr_loss(nearest_neighbours(z2, support), p1, t)) / 2
    support, pointer = enqueue(support, state['support_pointer'], z1)
    return loss, {'support': support, 'support_pointer': pointer}, {}


METHOD = NNCLR
