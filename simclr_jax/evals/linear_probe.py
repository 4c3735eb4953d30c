"""The offline linear probe: multinomial logistic regression on frozen features, on the accelerator.

    fit = fit_linear_probe(train_f, train_y, test_f, test_y, num_classes=10,
                           weight_decays=(1e-5, 1e-4, 1e-3), steps=500)
    fit['test_top1'], fit['weight_decay']

Features are standardised with the training split's mean and deviation. The weight decay (an L2
penalty wd/2 |W|^2 on the weights, not the bias, added to the mean cross-entropy) is chosen on
a held-out tenth of the training split (fixed seed), then the probe is refitted on all of it.
Each fit is full-batch L-BFGS (optax.lbfgs) until the gradient vanishes (or `steps` iterations).
This minimises the same objective as scikit-learn's
LogisticRegression(C=1 / (wd * N)) on the same standardised features.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

_HIGHEST = jax.lax.Precision.HIGHEST


def _objective(wb, x, y, weight_decay, num_classes):
  w, b = wb
  logits = jnp.dot(x, w, precision=_HIGHEST) + b
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.5 * weight_decay * jnp.sum(w * w)


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def _fit(x, y, weight_decay, num_classes: int, steps: int, tolerance: float = 1e-5):
  """(W [F, C], b [C]) minimising the objective: L-BFGS until the gradient's norm is below
  tolerance, or for `steps` iterations."""
  loss = functools.partial(_objective, x=x, y=y, weight_decay=weight_decay, num_classes=num_classes)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)
  wb = (jnp.zeros((x.shape[1], num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))

  def not_done(carry):
    _, state, i = carry
    grad = optax.tree_utils.tree_get(state, 'grad')
    return (i == 0) | ((i < steps) & (optax.tree_utils.tree_norm(grad) > tolerance))

  def body(carry):
    wb, state, i = carry
    value, grad = value_and_grad(wb, state=state)
    updates, state = opt.update(grad, state, wb, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(wb, updates), state, i + 1

  wb, _, _ = jax.lax.while_loop(not_done, body, (wb, opt.init(wb), 0))
  return wb


@jax.jit
def _top1(w, b, x, y):
  return jnp.mean(jnp.argmax(jnp.dot(x, w, precision=_HIGHEST) + b, -1) == y)


def standardize(train_f, *others):
  """Features scaled by the training split's per-dimension mean and deviation."""
  train_f = jnp.asarray(train_f, jnp.float32)
  mean, std = train_f.mean(0), train_f.std(0) + 1e-6
  return tuple((jnp.asarray(f, jnp.float32) - mean) / std for f in (train_f,) + others)


def fit_linear_probe(train_f, train_y, test_f, test_y, num_classes: int,
                     weight_decays=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2), steps: int = 500,
                     holdout: float = 0.1, seed: int = 0) -> dict:
  """Test top-1 of the probe with the weight decay that does best on the held-out tenth."""
  train_f, test_f = standardize(train_f, test_f)
  train_y, test_y = jnp.asarray(train_y, jnp.int32), jnp.asarray(test_y, jnp.int32)
  n = train_f.shape[0]
  order = np.random.default_rng(seed).permutation(n)
  n_held = max(1, int(round(holdout * n)))
  held, kept = order[:n_held], order[n_held:]
  held_top1 = []
  for wd in weight_decays:
    w, b = _fit(train_f[kept], train_y[kept], jnp.float32(wd), num_classes, steps)
    held_top1.append(float(_top1(w, b, train_f[held], train_y[held])))
  best = int(np.argmax(held_top1))  # the first among equals
  w, b = _fit(train_f, train_y, jnp.float32(weight_decays[best]), num_classes, steps)
  return {'test_top1': float(_top1(w, b, test_f, test_y)),
          'weight_decay': float(weight_decays[best]), 'heldout_top1': held_top1}
