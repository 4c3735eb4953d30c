"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): each global view's embeddings are assigned to prototypes under an equipartition
constraint (Sinkhorn-Knopp over the global batch), and every other crop predicts that code from
its own prototype scores, a swapped prediction; multi-crop adds small crops that only predict.
Recipe: configs/swav.py (solo-learn's CIFAR multi-crop recipe: 2 x 32 px + 6 x 18 px).

    python -m simclr_jax.main --config=configs/swav.py --config.local_crops=0   # two views only

With z the normalised embedding of a crop, c_1..c_K the prototypes (unit columns,
models.Prototypes, frozen for the first freeze_prototypes_epochs epochs) and s = z . c its
scores, the code of global view i is q_i = SK(s_i) (the paper's Eq. 3: sinkhorn_iterations
rounds of equipartition at entropy sinkhorn_epsilon, a constant for the gradient), and the loss is
    mean over global views i, mean over the other crops v != i of mean_b -sum_k q_i log softmax(s_v / T)
(Eq. 1-2). With queue_size > 0 every step pushes the global views' embeddings into a queue, one
per global view, newest first; from epoch queue_start_epochs on, once the queue is full (its last
row written, as the authors' code waits), its rows are scored with the current prototypes and
join the batch in the Sinkhorn-Knopp, so a small batch still divides evenly among many prototypes
(section 4.1), and only the batch's codes are used. Each group of
same-size crops goes through the network in one call, as SwAV's code runs them.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.methods.base import (Field, Group, Method, MultiCrop, Queue, fail, l2_normalize, layer_sizes, positive,
                                     whole_number)


def sinkhorn(scores, epsilon: float, iterations: int):
  """Codes [N, K] of scores [N, K] (the paper's Algorithm 1 and appendix A.1): Q = exp(s /
  epsilon), made a joint distribution, then `iterations` rounds of dividing each prototype's row
  by its sum times K and each sample's column by its sum times N; each code sums to 1. float32."""
  q = jnp.exp(scores.astype(jnp.float32) / epsilon).T  # [K, N]
  k, n = q.shape
  q = q / jnp.sum(q)
  for _ in range(iterations):
    q = q / (jnp.sum(q, axis=1, keepdims=True) * k)
    q = q / (jnp.sum(q, axis=0, keepdims=True) * n)
  return (q * n).T


def swapped_prediction(scores, codes, temperature: float):
  """The mean over the codes [G, B, K] (of the first G views) and over the other views' scores
  [V, B, K] of the cross-entropy of the code with the softmax of the scores at temperature."""
  log_p = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)
  per_code = [sum(-jnp.mean(jnp.sum(codes[i] * log_p[v], axis=-1)) for v in range(scores.shape[0]) if v != i)
              / (scores.shape[0] - 1) for i in range(codes.shape[0])]
  return sum(per_code) / len(per_code)


class SwAVScores(nn.Module):
  """The prototypes on the projector's output: (scores [B, num], []) as a model's predictor."""
  num: int

  @nn.compact
  def __call__(self, z, train: bool = True):
    return models.Prototypes(self.num, name='prototypes')(z), []


class SwAV(MultiCrop, Method):
  NAME = 'swav'
  PAPER = 'Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting Cluster Assignments'
  PER_VIEW_BATCHNORM = False
  FIELDS = {**MultiCrop.FIELDS, 'projection_dims': Field((2048, 128), layer_sizes, defines_run=True),
            'num_prototypes': Field(3000, positive, defines_run=True, doc='the prototypes (unit columns)'),
            'temperature': Field(0.1, positive, doc="the swapped prediction's softmax temperature"),
            'sinkhorn_iterations': Field(3, positive, doc="Sinkhorn-Knopp's iterations"),
            'sinkhorn_epsilon': Field(0.05, positive, doc="Sinkhorn-Knopp's entropy regularisation"),
            'queue_size': Field(3840, whole_number, defines_run=True,
                                doc='past embeddings queued per global view (0: no queue); read once full and from '
                                    'queue_start_epochs'),
            'queue_start_epochs': Field(50, whole_number,
                                        doc='the epoch from which the queue joins the Sinkhorn-Knopp'),
            'freeze_prototypes_epochs': Field(2, whole_number, doc='the prototypes left alone for the first epochs')}

  @classmethod
  def cross_check(cls, config) -> None:
    super().cross_check(config)
    if config.queue_size and config.queue_size < config.batch_size:
      fail('queue_size', config.queue_size,
           f'use 0 (no queue) or at least batch_size={config.batch_size} (each step pushes a whole batch)')

  def projector(self, dtype):
    """Linear-BN-ReLU-Linear (solo-learn's SwAV projector); the embedding is normalised by the
    prototypes."""
    return models.MLPHead(tuple(self.config['projection_dims']), norm=True, dtype=dtype)

  def predictor(self, dtype):
    return SwAVScores(self.config['num_prototypes'])

  def param_groups(self) -> dict:
    return {'predictor': Group(frozen_steps=self.config['freeze_prototypes_epochs'] * self.steps_per_epoch)}

  def queue(self):
    """Full once it holds queue_size rows of pushed embeddings; read from then, and from epoch
    queue_start_epochs."""
    rows = self.config['queue_size']
    if not rows:
      return None
    full = -(-rows // self.batch_size)
    return Queue(rows, full, max(full, self.config['queue_start_epochs'] * self.steps_per_epoch))

  def init_state(self, variables: dict) -> dict:
    if not self.config['queue_size']:
      return {}
    return {'queue': jnp.zeros((2, self.config['queue_size'], self.config['projection_dims'][-1]), jnp.float32)}

  def codes(self, model, params, scores, state, step):
    """The global views' codes [2, B, K] from their scores; with the queue in use (from
    queue_start_epochs, once full) its rows, scored with the current prototypes, join each view's
    Sinkhorn-Knopp."""
    eps, iterations = self.config['sinkhorn_epsilon'], self.config['sinkhorn_iterations']
    scores = jax.lax.stop_gradient(scores)
    plain = lambda: jnp.stack([sinkhorn(s, eps, iterations) for s in scores])
    if not self.config['queue_size']:
      return plain()

    def with_queue():
      queued = jax.lax.stop_gradient(model.apply({'params': params}, state['queue'],
                                                 method=lambda m, z: m.predictor(z)[0]))  # [2, Q, K]
      return jnp.stack([sinkhorn(jnp.concatenate([s, q]), eps, iterations)[:scores.shape[1]]
                        for s, q in zip(scores, queued)])
    full = jnp.any(state['queue'][:, -1] != 0)
    in_use = (jnp.asarray(step) >= self.config['queue_start_epochs'] * self.steps_per_epoch) & full
    return jax.lax.cond(in_use, with_queue, plain)  # the queue scored only once it is in use

  def loss(self, model, out, state, views, step, params=None):
    scores = jnp.concatenate([out[g]['prediction'] for g in ('global', 'local') if g in out])
    codes = self.codes(model, params, scores[:2], state, step)
    loss = swapped_prediction(scores, codes, self.config['temperature'])
    if self.config['queue_size']:
      z = jax.lax.stop_gradient(l2_normalize(out['global']['projection']))
      state = {'queue': jnp.concatenate([z, state['queue']], axis=1)[:, :self.config['queue_size']]}
    return loss, state, {}


METHOD = SwAV
