"""Config checks that run before any data is read or anything is compiled.

    validate_config(config)  # raises ConfigError with a one-line message
"""
from __future__ import annotations

import json
import os

from simclr_jax import config_base
from simclr_jax.errors import ConfigError
from simclr_jax.models import ARCHITECTURES, DTYPES

CHOICES = {
    'stage': config_base.STAGES,
    'model': tuple(ARCHITECTURES),
    'dtype': tuple(DTYPES),
    'optimizer': ('sgd', 'lars', 'adamw'),
    'lr_scaling': ('linear', 'sqrt', 'none'),
}
POSITIVE = ('batch_size', 'epochs', 'learning_rate', 'temperature', 'width', 'log_every_steps',
            'eval_batch_size', 'keep_checkpoints', 'knn_k', 'knn_temperature')
NON_NEGATIVE = ('train_limit', 'warmup_epochs', 'weight_decay', 'momentum', 'knn_every_epochs',
                'checkpoint_every_epochs', 'eval_every_epochs', 'seed', 'label_seed')
PROBABILITIES = ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob')


def _fail(field: str, value, fix: str):
  raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


def validate_config(config) -> None:
  """Checks names, ranges and cross-field rules; the type of each field is checked by ml_collections."""
  reference = (config_base.classifier_config(config.get('stage', 'pretrain'))
               if config.get('stage') in config_base.STAGES else config_base.base_config('pretrain'))
  for key in config.keys():
    if key not in reference:
      _fail(key, config[key], f'there is no such field; known fields: {", ".join(sorted(reference))}')
  for key in reference.keys():
    if key not in config:
      _fail(key, None, 'the field is missing; start the config from simclr_jax.config_base')
  for key, choices in CHOICES.items():
    if config[key] not in choices:
      _fail(key, config[key], f'use one of {", ".join(choices)}')
  for key in POSITIVE:
    if not config[key] > 0:
      _fail(key, config[key], 'it must be greater than 0')
  for key in NON_NEGATIVE:
    if config[key] < 0:
      _fail(key, config[key], 'it must be 0 or more')
  if config.warmup_epochs >= config.epochs and config.warmup_epochs > 0:
    _fail('warmup_epochs', config.warmup_epochs, f'it must be below epochs={config.epochs}')
  if not 0 < config.label_fraction <= 1:
    _fail('label_fraction', config.label_fraction, 'use a fraction in (0, 1]')
  if not isinstance(config.dataset, str) or not config.dataset:
    _fail('dataset', config.dataset, 'name a TFDS dataset such as cifar10')
  if config.data_dir and not os.path.isdir(config.data_dir):
    _fail('data_dir', config.data_dir, 'the folder does not exist; point it at prepared TFDS data '
          'or leave it empty for the TFDS default')
  aug = config.augment
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
  if len(config.projection_dims) < 1 or min(config.projection_dims) < 1:
    _fail('projection_dims', config.projection_dims, 'use positive layer sizes such as (2048, 128)')
  if config.stage in ('finetune', 'linear_eval') and not config.init_from:
    _fail('init_from', config.init_from, f'{config.stage} needs a pretraining workdir or checkpoint '
          'directory: set --config.init_from=runs/pretrain')


def check_workdir(workdir: str, config, fresh: bool = False) -> None:
  """Makes sure workdir is writable and, if it holds a run, that the run is this config's.

  Writes workdir/config.json the first time. With fresh=True an earlier run is moved
  into workdir/previous-<n> rather than deleted. In a multi-process run only process 0 checks.
  """
  import jax
  if jax.process_index() != 0:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} is not writable ({e.strerror}): choose another '
                      '--workdir or fix its permissions') from None
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    if fresh:
      _archive_run(workdir)
    else:
      try:
        with open(path) as f:
          saved = json.load(f)
      except (OSError, ValueError):
        raise ConfigError(f'{path} is unreadable: pass --fresh to start afresh (the old run is '
                          'kept in a previous-N folder) or choose another --workdir') from None
      current = json.loads(config.to_json())
      differ = [k for k in config_base.RUN_DEFINING_FIELDS if saved.get(k) != current.get(k)]
      if not differ:
        return
      if not _has_checkpoint(workdir):  # a run that never saved: keep its files aside, start anew
        _archive_run(workdir)
      else:
        detail = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differ)
        raise ConfigError(f'workdir {workdir!r} holds a run with another config ({detail}): '
                          'choose another --workdir, or pass --fresh to start afresh')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)


def _has_checkpoint(workdir: str) -> bool:
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def _archive_run(workdir: str) -> None:
  n = 1
  while os.path.exists(os.path.join(workdir, f'previous-{n}')):
    n += 1
  target = os.path.join(workdir, f'previous-{n}')
  os.makedirs(target)
  for name in os.listdir(workdir):
    if not name.startswith('previous-'):
      os.replace(os.path.join(workdir, name), os.path.join(target, name))
