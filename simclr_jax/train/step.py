"""The training state every stage's step reads and writes, and the step shared by every stage.

    state = TrainState.create(params, batch_stats, tx, seed, method_state)
    step = make_train_step(loss_fn, make_views, tx, update)   # then bound to an input path (data.pipeline)
    state, metrics = step(state, images_uint8, labels)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """Everything a step reads and writes; a checkpoint saves it whole. method_state holds what a
  method keeps beyond params and optimiser (an EMA target network, a teacher's variables)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array
  nonfinite_count: jax.Array
  first_nonfinite_step: jax.Array
  method_state: Any = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, params, batch_stats, tx: optax.GradientTransformation, seed: int,
             method_state=None) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), key=jax.random.PRNGKey(seed),
               nonfinite_count=jnp.zeros((), jnp.int32), first_nonfinite_step=-jnp.ones((), jnp.int32),
               method_state=method_state or {})

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(loss_fn: Callable, make_views: Callable, tx: optax.GradientTransformation,
                    update: Callable | None = None, inject_nan_at_step: int = -1) -> Callable:
  """step(state, images_uint8, labels) -> (state, metrics), to be bound to an input path.

  It makes the inputs (augmented views) from a key folded with the step, takes one optimiser
  step, runs the method's update hook (update(method_state, params, step) -> method_state: the
  EMA of a target network), and leaves the state unchanged (counting the step) when the
  objective or a gradient is not finite. loss_fn(params, batch_stats, method_state, inputs,
  labels, step) -> (objective, (batch_stats, method_state, metrics)), metrics holding 'loss'.
  """
  def step_fn(state: TrainState, images, labels):
    inputs = make_views(jax.random.fold_in(state.key, state.step), images)

    def objective(params):
      value, aux = loss_fn(params, state.batch_stats, state.method_state, inputs, labels, state.step)
      if inject_nan_at_step >= 0:
        value = jnp.where(state.step == inject_nan_at_step, jnp.nan, value)
      return value, aux

    (value, (new_stats, method_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if update is not None:
      method_state = update(method_state, params, state.step)
    updated = state.replace(params=params, batch_stats=new_stats, opt_state=new_opt,
                            method_state=method_state)
    finite = jnp.isfinite(value) & _all_finite(grads)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    new_state = new_state.replace(
        step=state.step + 1, nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                       state.first_nonfinite_step))
    if inject_nan_at_step >= 0:
      metrics = {**metrics, 'loss': jnp.where(state.step == inject_nan_at_step, jnp.nan, metrics['loss'])}
    return new_state, metrics

  return step_fn
