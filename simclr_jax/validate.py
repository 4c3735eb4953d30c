"""Config checks that run before any data is read or anything is compiled.

    validate_config(config)  # raises ConfigError with a one-line message
"""
from __future__ import annotations

import math
import os

from simclr_jax import config_base
from simclr_jax.errors import ConfigError
from simclr_jax.models import ARCHITECTURES, DTYPE_CHOICES, STEMS

CHOICES = {
    'stage': config_base.STAGES,
    'model': tuple(ARCHITECTURES),
    'dtype': DTYPE_CHOICES,
    'optimizer': ('sgd', 'lars', 'adamw'),
    'lr_scaling': ('linear', 'sqrt', 'none'),
    'stem': ('auto',) + STEMS,
    'data_placement': ('auto', 'device', 'stream'),
}
POSITIVE = ('batch_size', 'epochs', 'learning_rate', 'temperature', 'width', 'log_every_steps',
            'eval_batch_size', 'keep_checkpoints')
NON_NEGATIVE = ('train_limit', 'warmup_epochs', 'weight_decay', 'momentum', 'checkpoint_every_epochs',
                'seed', 'label_seed', 'online_probe_learning_rate', 'image_size', 'input_workers')
PROBABILITIES = ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob')
PROTOCOLS = ('features', 'augmented')


def _fail(field: str, value, fix: str):
  raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


def _non_finite(tree, prefix=''):
  """(field, value) of the first NaN or infinite number in a config, or None."""
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      found = _non_finite(value, name + '.')
      if found:
        return found
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, float) and not math.isfinite(v):
        return name, value
  return None


def validate_config(config) -> None:
  """Checks names, ranges and cross-field rules; the type of each field is checked by ml_collections."""
  stage = config.get('stage')
  reference = config_base.reference_config(stage if stage in config_base.STAGES else 'pretrain')
  for key in config.keys():
    if key not in reference:
      _fail(key, config[key], f'there is no such field; known fields: {", ".join(sorted(reference))}')
  for key in reference.keys():
    if key not in config:
      _fail(key, None, 'the field is missing; start the config from simclr_jax.config_base')
  for key, choices in CHOICES.items():
    if config[key] not in choices:
      _fail(key, config[key], f'use one of {", ".join(choices)}')
  bad = _non_finite(config)
  if bad:
    _fail(bad[0], bad[1], 'use a finite number')
  for key in POSITIVE:
    if not config[key] > 0:
      _fail(key, config[key], 'it must be greater than 0')
  for key in NON_NEGATIVE:
    if config[key] < 0:
      _fail(key, config[key], 'it must be 0 or more')
  if not 0 < config.label_fraction <= 1:
    _fail('label_fraction', config.label_fraction, 'use a fraction in (0, 1]')
  if not isinstance(config.dataset, str) or not config.dataset:
    _fail('dataset', config.dataset, 'name a TFDS dataset such as cifar10, or folder:PATH')
  if config.dataset.startswith('folder:') and not config.image_size:
    _fail('image_size', config.image_size, f'{config.dataset} is resized on load: set '
          '--config.image_size, for example 32, 96 or 224')
  if not 0 < config.test_fraction < 1:
    _fail('test_fraction', config.test_fraction, 'use a fraction in (0, 1), such as 0.1')
  if not 0 <= config.max_bad_fraction <= 1:
    _fail('max_bad_fraction', config.max_bad_fraction, 'use a fraction in [0, 1]')
  if not config.train_split:
    _fail('train_split', config.train_split, 'name a split such as train or train+unlabelled')
  if config.image_size and config.image_size < 8:
    _fail('image_size', config.image_size, 'use 8 px or more (0 keeps a TFDS dataset\'s own size)')
  if config.data_dir and not os.path.isdir(config.data_dir):
    _fail('data_dir', config.data_dir, 'the folder does not exist; point it at prepared TFDS data '
          'or leave it empty for the TFDS default')
  _validate_augment(config.augment)
  _validate_evals(config.evals)
  if len(config.projection_dims) < 1 or min(config.projection_dims) < 1:
    _fail('projection_dims', config.projection_dims, 'use positive layer sizes such as (2048, 128)')
  if config.stage == 'linear_eval' and config.protocol not in PROTOCOLS:
    _fail('protocol', config.protocol, f'use one of {", ".join(PROTOCOLS)}')
  if config.stage != 'linear_eval' and config.protocol:
    _fail('protocol', config.protocol, 'only linear_eval has a protocol; leave it empty')
  if config.stage in ('finetune', 'linear_eval') and not config.init_from:
    _fail('init_from', config.init_from, f'{config.stage} needs a pretraining workdir or checkpoint '
          'directory: set --config.init_from=runs/pretrain')


def _validate_augment(aug) -> None:
  for key in PROBABILITIES:
    if not 0 <= aug[key] <= 1:
      _fail(f'augment.{key}', aug[key], 'a probability must lie in [0, 1]')
  for key in ('brightness', 'contrast', 'saturation'):
    if aug[key] < 0:
      _fail(f'augment.{key}', aug[key], 'it must be 0 or more')
  if not 0 <= aug.hue <= 0.5:
    _fail('augment.hue', aug.hue, 'it must lie in [0, 0.5]')
  lo, hi = aug.crop_scale
  if not 0 < lo <= hi <= 1:
    _fail('augment.crop_scale', aug.crop_scale, 'use (min, max) with 0 < min <= max <= 1')
  lo, hi = aug.crop_ratio
  if not 0 < lo <= hi:
    _fail('augment.crop_ratio', aug.crop_ratio, 'use (min, max) with 0 < min <= max')
  if len(aug.std) != 3 or min(aug.std) <= 0:
    _fail('augment.std', aug.std, 'use three deviations greater than 0, e.g. (0.2023, 0.1994, 0.2010)')
  if len(aug.mean) != 3:
    _fail('augment.mean', aug.mean, 'use three channel means, e.g. (0.4914, 0.4822, 0.4465)')
  if aug.crop_padding < 0:
    _fail('augment.crop_padding', aug.crop_padding, 'it must be 0 or more')


def _validate_evals(evals) -> None:
  from simclr_jax.evaluate import EVALUATORS
  for name, cfg in evals.items():
    if name not in EVALUATORS:
      _fail(f'evals.{name}', None, f'there is no such evaluator; known: {", ".join(EVALUATORS)}')
    if cfg.every_epochs < -1:
      _fail(f'evals.{name}.every_epochs', cfg.every_epochs,
            'use N > 0 (every N epochs and at the end), 0 (at the end) or -1 (never)')
    for key in ('k', 'temperature', 'steps'):
      if key in cfg and not cfg[key] > 0:
        _fail(f'evals.{name}.{key}', cfg[key], 'it must be greater than 0')
    if 'weight_decays' in cfg and (not cfg.weight_decays or min(cfg.weight_decays) < 0):
      _fail(f'evals.{name}.weight_decays', cfg.weight_decays, 'use one or more values of 0 or more')
