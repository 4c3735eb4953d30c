"""MoCo v2+ (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive
Learning", made symmetric as solo-learn's MoCoV2Plus): a momentum encoder and projector give each
view a key; each view's query is scored against the other view's key among the negatives of a
queue of past keys, one queue per view, the global batch's keys enqueued after the step (first in,
first out, in the global batch's order on any number of devices). Recipe: configs/mocov2plus.py.

    python -m simclr_jax.main --config=configs/mocov2plus.py --config.queue_size=32768

With q the normalised online projection of a view, k+ the normalised momentum projection of the
other view and k_1..k_K that view's queue (the keys of the last K / B steps), each query's loss is
-log exp(q k+ / T) / (exp(q k+ / T) + sum_i exp(q k_i / T)) (the paper's InfoNCE), averaged over
the batch and over the two directions. The queues start as unit vectors drawn from a fixed key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax.methods.base import (Field, MomentumMethod, check_queue_size, enqueue, fifo_queue, l2_normalize,
                                     layer_sizes, positive)


def queue_infonce(q, k, queue, temperature: float):
  """Mean InfoNCE of queries q [B, D] with their positives k [B, D] and the negatives of queue
  [K, D] (every input L2-normalised), in float32."""
  positive_logit = jnp.sum(q * k, axis=-1, keepdims=True)
  logits = jnp.concatenate([positive_logit, q @ queue.T], axis=-1).astype(jnp.float32) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])


class MoCoV2Plus(MomentumMethod):
  NAME = 'mocov2plus'
  PAPER = 'Chen, Fan, Girshick, He 2020, Improved Baselines with Momentum Contrastive Learning'
  FIELDS = {**MomentumMethod.FIELDS, 'projection_dims': Field((2048, 256), layer_sizes, defines_run=True),
            'temperature': Field(0.2, positive, doc="InfoNCE's temperature"),
            'queue_size': Field(32768, positive, defines_run=True,
                                doc="the keys in each view's queue (a multiple of batch_size; full after queue_size / "
                                    "batch_size steps)")}

  @classmethod
  def cross_check(cls, config) -> None:
    super().cross_check(config)
    check_queue_size(config)

  def queue(self):
    return fifo_queue(self.config['queue_size'], self.batch_size)

  def init_state(self, variables: dict) -> dict:
    dims = self.config['projection_dims'][-1]
    queue = l2_normalize(jax.random.normal(jax.random.PRNGKey(0), (2, self.config['queue_size'], dims)))
    return {**super().init_state(variables), 'queue': queue, 'queue_pointer': jnp.zeros((), jnp.int32)}

  def loss(self, model, out, state, views, step, params=None):
    keys, state = self.target_projections(model, state, views)
    q1, q2 = l2_normalize(out['global']['projection'])
    k1, k2 = l2_normalize(keys['global'])
    queue, t = state['queue'], self.config['temperature']
    loss = (queue_infonce(q1, k2, queue[1], t) + queue_infonce(q2, k1, queue[0], t)) / 2
    queue, pointer = enqueue(queue, state['queue_pointer'], jnp.stack([k1, k2]))
    return loss, {**state, 'queue': queue, 'queue_pointer': pointer}, {'tau': self.tau(step)}


METHOD = MoCoV2Plus
