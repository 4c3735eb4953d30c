"""Learning-rate schedules, optimisers, weight-decay masks, and one optimiser per parameter group.

    peak = peak_learning_rate(0.3, batch_size=512, scaling='linear')
    schedule = make_schedule(peak, total_steps=200 * 97, warmup_epochs=10, steps_per_epoch=97)
    tx = make_optimizer('sgd', schedule, momentum=0.9, weight_decay=5e-4)
    tx = partition({'model': tx, 'frozen': optax.set_to_zero()}, {'encoder': 'frozen', 'head': 'model'})
"""
from __future__ import annotations

import math

import jax
import optax

from simclr_jax.metrics import log

# Warmup longer than this share of the run is shortened to it (a short run just works).
MAX_WARMUP_SHARE = 0.25


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """The one place durations in epochs become steps (a run's length, its warmup, a checkpoint's
  record of its length)."""
  return int(round(epochs * steps_per_epoch))


def peak_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
  """base_lr is for a batch of 256: 'linear' scales by B/256, 'sqrt' by sqrt(B/256), 'none' keeps it."""
  ratio = batch_size / 256
  return base_lr * {'linear': ratio, 'sqrt': math.sqrt(ratio), 'none': 1.0}[scaling]


def make_schedule(peak: float, total_steps: int, warmup_epochs: float, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to 0 at the last of total_steps (>= 1).
  A warmup longer than MAX_WARMUP_SHARE of the run is shortened to it, with a notice."""
  warmup = epochs_to_steps(warmup_epochs, steps_per_epoch)
  cap = int(round(MAX_WARMUP_SHARE * total_steps))
  if warmup > cap:
    log(f'notice: warmup_epochs={warmup_epochs:g} shortened to {cap / steps_per_epoch:g} ({cap} steps), a '
        f'quarter of the run\'s {total_steps} steps')
  warmup = min(warmup, cap, total_steps - 1)
  if warmup == 0:
    return optax.cosine_decay_schedule(peak, total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps, end_value=0.0)


def decay_mask(params):
  """True for kernels (ndim > 1); False for biases and BatchNorm scales and offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(name: str, schedule: optax.Schedule, momentum: float, weight_decay: float,
                   lars_eta: float = 0.001) -> optax.GradientTransformation:
  """SGD with momentum, LARS (trust coefficient lars_eta) or AdamW; no decay or LARS adaptation
  on biases and BatchNorm."""
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask),
                       optax.sgd(schedule, momentum=momentum, nesterov=False))
  if name == 'lars':
    return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                      trust_coefficient=lars_eta, trust_ratio_mask=decay_mask, momentum=momentum)
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
  raise ValueError(f'unknown optimizer {name!r}')


def partition(transforms: dict, groups: dict) -> optax.GradientTransformation:
  """One optimiser per parameter group: groups maps each top-level params key (encoder, head,
  online_probe, ...) to a key of transforms. Use optax.set_to_zero() for a frozen group."""
  def labels(params):
    return {k: jax.tree.map(lambda _, g=groups[k]: g, v) for k, v in params.items()}
  return optax.multi_transform(transforms, labels)
