"""What a self-supervised method is: its model, its loss, any state beyond params and optimiser,
an update hook run inside the compiled step and the config fields it adds. Its pair of views is
config.augment and config.view2 (the second view's differences, for asymmetric views).

    method = methods.get('byol')(config, total_steps)   # reads only its own fields
    model = method.make_model(encoder, probe_classes=10)
    state = method.init_state(variables)                 # e.g. the EMA target network
    out, stats = apply_views(model, variables, views, method.PER_VIEW_BATCHNORM)  # the online outputs
    loss, state, metrics = method.loss(model, out, state, views, step)
    state = method.update(state, params, step)           # after the optimiser step (EMA)
    method.constant_lr_groups()                          # e.g. ('predictor',): no decay

A subclass sets NAME and FIELDS (the config fields it adds, with defaults; configs/<NAME>.py sets
its recipe) and overrides what differs from the defaults here: a Dense-ReLU-Dense projector, no
predictor, no state, no update.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.core.errors import ConfigError


def fail(field: str, value, fix: str):
  raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


def pairs(x):
  """(rows of the first views, rows of the second views) of a [2B, ...] array."""
  return x[0::2], x[1::2]


def l2_normalize(x, eps: float = 1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def interleave(a, b):
  """[B, ...] and [B, ...] -> [2B, ...] with rows 2k from a and 2k+1 from b (pairs' inverse)."""
  return jnp.stack([a, b], axis=1).reshape((-1,) + a.shape[1:])


def apply_views(model, variables: dict, views, per_view: bool, **kwargs):
  """(outputs, updated batch_stats) of the model in training mode on the views [2B, ...]. With
  per_view, each view's half goes through the model on its own, so BatchNorm normalises each by
  its own statistics and updates its running averages twice, as two forward calls do in PyTorch;
  the outputs are interleaved back into rows 2k and 2k+1."""
  if not per_view:
    out, updated = model.apply(variables, views, train=True, mutable=['batch_stats'], **kwargs)
    return out, updated['batch_stats']
  first, second = pairs(views)
  out_a, updated = model.apply(variables, first, train=True, mutable=['batch_stats'], **kwargs)
  out_b, updated = model.apply({**variables, 'batch_stats': updated['batch_stats']}, second, train=True,
                               mutable=['batch_stats'], **kwargs)
  return jax.tree.map(interleave, out_a, out_b), updated['batch_stats']


def check_dims(config, field: str) -> None:
  dims = config[field]
  if len(dims) < 1 or min(dims) < 1:
    fail(field, tuple(dims), 'use positive layer sizes such as (2048, 128)')


class Method:
  NAME = ''
  FIELDS: dict = {}
  # Each view through the network on its own (BatchNorm statistics per view), as the authors' code
  # of MoCo v3, BYOL, SimSiam, Barlow Twins and VICReg and solo-learn do; SimCLR's reference runs
  # both views as one batch.
  PER_VIEW_BATCHNORM = True

  def __init__(self, config, total_steps: int = 1):
    self.config = {k: config[k] for k in ('projection_dims', 'finetune_from_head_layer', *self.FIELDS)}
    self.total_steps = max(1, total_steps)

  @classmethod
  def validate(cls, config) -> None:
    """ConfigError for a bad value of the method's fields (before anything runs)."""
    check_dims(config, 'projection_dims')
    for field, default in cls.FIELDS.items():
      if isinstance(default, tuple):
        check_dims(config, field)
    hidden = len(config.projection_dims) - 1
    if config.finetune_from_head_layer > hidden:
      fail('finetune_from_head_layer', config.finetune_from_head_layer,
           f'the projector has {len(config.projection_dims)} layers (projection_dims='
           f'{tuple(config.projection_dims)}), of which {hidden} hidden: use a value from 0 to {hidden}')

  # The model.
  def projector(self, dtype) -> models.MLPHead:
    return models.MLPHead(tuple(self.config['projection_dims']), dtype=dtype)

  def predictor(self, dtype) -> models.MLPHead | None:
    return None

  def make_model(self, encoder, probe_classes: int = 0) -> models.PretrainModel:
    """The online model; its feature_layer is the config's finetune_from_head_layer."""
    return models.PretrainModel(encoder=encoder, projector=self.projector(encoder.dtype),
                                predictor=self.predictor(encoder.dtype), probe_classes=probe_classes,
                                feature_layer=self.config['finetune_from_head_layer'])

  # The optimiser.
  def constant_lr_groups(self) -> tuple:
    """Parameter groups ('predictor', ...) trained at the peak learning rate throughout."""
    return ()

  # State beyond params and optimiser, and its update inside the compiled step.
  def init_state(self, variables: dict) -> dict:
    return {}

  def update(self, state: dict, params, step) -> dict:
    return state

  def loss(self, model, out: dict, state: dict, views, step):
    """(loss, state, metrics) from the online model's outputs on the views (rows 2k and 2k+1 are
    the two views of image k)."""
    raise NotImplementedError


class MomentumMethod(Method):
  """A method with an EMA target network (encoder and projector). Its decay tau rises from
  base_tau to final_tau on a cosine over the run (BYOL, section 3.3): at step k of K,
  tau = final - (final - base) * (cos(pi * k / K) + 1) / 2, and after the optimiser step the
  target's parameters become tau * target + (1 - tau) * online. Its BatchNorm statistics come from
  its own forward passes in training mode, as in BYOL's and solo-learn's code."""
  FIELDS = {'base_tau': 0.99, 'final_tau': 1.0}
  TARGET = ('encoder', 'projector')

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    if not 0 <= config.final_tau <= 1:
      fail('final_tau', config.final_tau, 'use a decay in [0, 1] (1.0: the target stops moving at the end)')
    if not 0 <= config.base_tau <= config.final_tau:
      fail('base_tau', config.base_tau, f'use 0 <= base_tau <= final_tau (final_tau={config.final_tau})')

  def init_state(self, variables: dict) -> dict:
    """The target starts as a copy of the online encoder and projector (its own buffers)."""
    return {'target': {c: jax.tree.map(lambda x: jnp.array(x, copy=True), {k: variables[c][k] for k in self.TARGET})
                       for c in ('params', 'batch_stats')}}

  def tau(self, step):
    base, final = self.config['base_tau'], self.config['final_tau']
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / self.total_steps, 1.0)
    return final - (final - base) * (jnp.cos(math.pi * progress) + 1) / 2

  def update(self, state: dict, params, step) -> dict:
    tau = self.tau(step)
    online = {k: params[k] for k in self.TARGET}
    averaged = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, state['target']['params'], online)
    return {**state, 'target': {**state['target'], 'params': averaged}}

  def target_projections(self, model, state: dict, views):
    """(stop-gradient target projections of the views, state with the target's new BatchNorm
    statistics)."""
    target = state['target']
    out, stats = apply_views(model, target, views, self.PER_VIEW_BATCHNORM, target=True)
    state = {**state, 'target': {**target, 'batch_stats': stats}}
    return jax.lax.stop_gradient(out['projection']), state
