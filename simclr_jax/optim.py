"""Learning-rate schedules, optimisers and weight-decay masks (optax).

    schedule = make_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, schedule)
"""
from __future__ import annotations

import math

import jax
import optax


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """The one place durations in epochs become steps."""
  return int(round(epochs * steps_per_epoch))


def peak_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
  """base_lr is for a batch of 256: 'linear' scales by B/256, 'sqrt' by sqrt(B/256), 'none' keeps it."""
  ratio = batch_size / 256
  return base_lr * {'linear': ratio, 'sqrt': math.sqrt(ratio), 'none': 1.0}[scaling]


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to 0 at the last step."""
  peak = peak_learning_rate(config.learning_rate, config.batch_size, config.lr_scaling)
  total = max(1, epochs_to_steps(config.epochs, steps_per_epoch))
  warmup = min(epochs_to_steps(config.warmup_epochs, steps_per_epoch), total - 1)
  if warmup == 0:
    return optax.cosine_decay_schedule(peak, total)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)


def decay_mask(params):
  """True for kernels (ndim > 1); False for biases and BatchNorm scales and offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum, LARS or AdamW; no decay or LARS adaptation on biases and BatchNorm."""
  wd = config.weight_decay
  if config.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(wd, decay_mask),
                       optax.sgd(schedule, momentum=config.momentum, nesterov=False))
  if config.optimizer == 'lars':
    return optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                      trust_ratio_mask=decay_mask, momentum=config.momentum)
  if config.optimizer == 'adamw':
    return optax.adamw(schedule, weight_decay=wd, mask=decay_mask)
  raise ValueError(f'unknown optimizer {config.optimizer!r}')
