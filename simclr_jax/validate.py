"""Config checks that run before any data is read or anything is compiled.

    validate_config(config)  # raises ConfigError with a one-line message
"""
from __future__ import annotations

import math
import os

import ml_collections

from simclr_jax import config_base, methods
from simclr_jax.data import registry
from simclr_jax.data.augment import AugmentSettings
from simclr_jax.core.errors import ConfigError
from simclr_jax.core.parallel import nearest_divisor
from simclr_jax.stages import starts
from simclr_jax.models import DTYPE_CHOICES, MODELS, STEMS, is_vit
from simclr_jax.train.optim import TRUST_RATIOS

CHOICES = {
    'stage': config_base.STAGES,
    'model': MODELS,
    'dtype': DTYPE_CHOICES,
    'optimizer': ('sgd', 'lars', 'adamw'),
    'lr_scaling': ('linear', 'sqrt', 'none'),
    'stem': ('auto',) + STEMS,
    'data_placement': ('auto', 'device', 'stream'),
    'method': methods.NAMES,
    'protocol': ('features', 'augmented'),
    'lars_trust_ratio': TRUST_RATIOS,
}
POSITIVE = ('batch_size', 'epochs', 'learning_rate', 'width', 'log_every_steps', 'log_every_seconds',
            'eval_batch_size', 'keep_checkpoints', 'lars_eta', 'patch_size', 'layer_decay')
NON_NEGATIVE = ('train_limit', 'warmup_epochs', 'weight_decay', 'momentum', 'checkpoint_every_epochs',
                'online_probe_learning_rate', 'image_size', 'input_workers', 'finetune_from_head_layer',
                'gradient_clip_norm')
SEEDS = ('seed', 'label_seed')  # NumPy and JAX take seeds below 2**32
PROBABILITIES = ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob', 'solarize_prob')


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
  if config.get('stage') == 'pretrain' and config.get('method') not in methods.NAMES:
    _fail('method', config.get('method'), f'use one of {", ".join(methods.NAMES)}')
  starts.start_of(config)  # init_from, distill's teacher_from
  for key in starts.ENCODER + starts.DATA:
    if key in config and config[key] is None:
      _fail(key, None, 'the field is unset: stages.starts.fill(config) takes it from init_from (the command line '
            'does), or set it')
  reference = config_base.reference_config(config)
  extra = [k for k in config.keys() if k not in reference]
  missing = [k for k in reference.keys() if k not in config]
  if config.get('stage') == 'pretrain' and (extra or missing):
    others = {k for name in methods.NAMES for k in config_base.method_fields(name)}
    if set(extra + missing) & others:
      _fail('method', config.method, f'the config has the fields of another method ({", ".join(extra + missing)} '
            f'differ): start from --config=configs/{config.method}.py (a config file per method)')
  for key in extra:
    _fail(key, config[key], f'there is no such field for stage {config.get("stage")!r}; known fields: '
          f'{", ".join(sorted(reference))}')
  for key in missing:
    _fail(key, None, 'the field is missing; start the config from simclr_jax.config_base')
  for key, choices in CHOICES.items():
    if key in config and config[key] not in choices:
      _fail(key, config[key], f'use one of {", ".join(choices)}')
  bad = _non_finite(config)
  if bad:
    _fail(bad[0], bad[1], 'use a finite number')
  for key in POSITIVE:
    if not config[key] > 0:
      _fail(key, config[key], 'it must be greater than 0')
  for key in NON_NEGATIVE:
    if key in config and config[key] < 0:
      _fail(key, config[key], 'it must be 0 or more')
  for key in SEEDS:
    if not 0 <= config[key] < 2**32:
      _fail(key, config[key], 'use a seed from 0 to 4294967295')
  if not config.momentum < 1:
    _fail('momentum', config.momentum, 'use a momentum in [0, 1), such as 0.9')
  if not 0 < config.label_fraction <= 1:
    _fail('label_fraction', config.label_fraction, 'use a fraction in (0, 1]')
  if not isinstance(config.dataset, str) or not config.dataset:
    _fail('dataset', config.dataset, 'name a TFDS dataset such as cifar10, or folder:PATH')
  problem = registry.check(config.dataset, config.image_size)
  if problem:
    _fail('image_size', config.image_size, problem)
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
  if config.weight_decay_end is not None and config.weight_decay_end < 0:
    _fail('weight_decay_end', config.weight_decay_end, 'use 0 or more, or leave it unset for a constant weight_decay')
  if not 0 < config.adam_beta2 < 1:
    _fail('adam_beta2', config.adam_beta2, 'use a decay in (0, 1), such as 0.999 (0.95 in MAE\'s recipe)')
  if config.layer_decay > 1:
    _fail('layer_decay', config.layer_decay, 'use a decay in (0, 1] (1: every layer at the same rate; MAE fine-tunes at 0.75)')
  if config.layer_decay < 1 and not is_vit(config.model):
    _fail('layer_decay', config.layer_decay, f'it decays a ViT\'s blocks and model={config.model!r} has none: use 1.0')
  if is_vit(config.model) and config.image_size and config.image_size % config.patch_size:
    _fail('patch_size', config.patch_size, f'use a divisor of image_size={config.image_size} (a ViT cuts whole patches)')
  _validate_augment('augment', config.augment)
  _validate_evals(config.evals)
  if config.stage == 'pretrain':
    if not 1 <= config.batch_chunks <= config.batch_size or config.batch_size % config.batch_chunks:
      _fail('batch_chunks', config.batch_chunks, f'use a divisor of batch_size={config.batch_size}, such as '
            f'{nearest_divisor(config.batch_size, config.batch_chunks)} (1: the whole batch at once)')
    methods.get(config.method).validate(config)
    for name, value in config.items():  # view2 and a method's own view fields (local_view)
      if isinstance(value, ml_collections.ConfigDict) and set(value.keys()) == set(AugmentSettings._fields):
        _validate_augment(name, {k: v for k, v in value.items() if v is not None}, partial=True)
  if config.stage == 'distill':
    if not config.distill_temperature > 0:
      _fail('distill_temperature', config.distill_temperature, 'use a temperature above 0 (1.0 as in SimCLR v2)')
    if not 0 <= config.distill_label_weight <= 1:
      _fail('distill_label_weight', config.distill_label_weight, 'use a weight in [0, 1] (0: the teacher alone)')


def _pair(name: str, value, low_ok: float, fix: str):
  """(lo, hi) of a two-number range field, or ConfigError naming it."""
  if len(value) != 2:
    _fail(name, tuple(value), f'give two numbers (min, max), {fix}')
  lo, hi = value
  if not low_ok < lo <= hi:
    _fail(name, tuple(value), f'use (min, max) with {low_ok:g} < min <= max, {fix}')
  return lo, hi


def _validate_augment(name: str, aug, partial: bool = False) -> None:
  has = lambda key: key in aug
  for key in PROBABILITIES:
    if has(key) and not 0 <= aug[key] <= 1:
      _fail(f'{name}.{key}', aug[key], 'a probability must lie in [0, 1]')
  for key in ('brightness', 'contrast', 'saturation'):
    if has(key) and aug[key] < 0:
      _fail(f'{name}.{key}', aug[key], 'it must be 0 or more')
  if has('hue') and not 0 <= aug['hue'] <= 0.5:
    _fail(f'{name}.hue', aug['hue'], 'it must lie in [0, 0.5]')
  if has('crop_scale'):
    _, hi = _pair(f'{name}.crop_scale', aug['crop_scale'], 0, 'such as (0.08, 1.0): shares of the image area')
    if hi > 1:
      _fail(f'{name}.crop_scale', tuple(aug['crop_scale']), 'use (min, max) with 0 < min <= max <= 1, such as '
            '(0.08, 1.0): shares of the image area')
  if has('crop_ratio'):
    _pair(f'{name}.crop_ratio', aug['crop_ratio'], 0, 'such as (0.75, 1.333): aspect ratios')
  if has('blur_sigma'):
    _pair(f'{name}.blur_sigma', aug['blur_sigma'], 0, 'such as (0.1, 2.0): the Gaussian blur\'s deviations in pixels')
  if has('std') and (len(aug['std']) != 3 or min(aug['std']) <= 0):
    _fail(f'{name}.std', aug['std'], 'use three deviations greater than 0, e.g. (0.2023, 0.1994, 0.2010)')
  if has('mean') and len(aug['mean']) != 3:
    _fail(f'{name}.mean', aug['mean'], 'use three channel means, e.g. (0.4914, 0.4822, 0.4465)')
  if has('crop_padding') and aug['crop_padding'] < 0:
    _fail(f'{name}.crop_padding', aug['crop_padding'], 'it must be 0 or more')


def _validate_evals(evals) -> None:
  from simclr_jax.evals import TYPES
  for name, cfg in evals.items():
    if (cfg.get('type') or name) not in TYPES:
      _fail(f'evals.{name}.type', cfg.get('type'), f'use an evaluator type: {", ".join(TYPES)} (it defaults to '
            'the name)')
    if 'every_epochs' not in cfg or cfg.every_epochs < -1:
      _fail(f'evals.{name}.every_epochs', cfg.get('every_epochs'),
            'use N > 0 (every N epochs and at the end), 0 (at the end) or -1 (never)')
    for key in ('k', 'temperature', 'steps'):
      if key in cfg and not cfg[key] > 0:
        _fail(f'evals.{name}.{key}', cfg[key], 'it must be greater than 0')
    if 'weight_decays' in cfg and (not cfg.weight_decays or min(cfg.weight_decays) < 0):
      _fail(f'evals.{name}.weight_decays', cfg.weight_decays, 'use one or more values of 0 or more')
