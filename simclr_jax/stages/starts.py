"""What a downstream run takes from the run it starts from: the encoder's architecture and, when
unset, the data, read from the checkpoint's record before anything else happens.

    note = fill(config)   # before validate_config; '' when nothing was taken
    log(note)             # 'from init_from runs/pretrain: model resnet10, width 0.125, stem cifar, ...'

finetune and linear_eval start from init_from; distill from init_from when it is set, else from
its teacher_from (the student then has the teacher's architecture: SimCLR v2's self-distillation).
Their configs leave model, width, stem and patch_size unset (None) and so does every stage's
dataset (None: the start's, with its data_dir and image_size). A value set on the command line or
in a config file is kept: for init_from it must then be the checkpoint's (classify refuses another
encoder with one line), a student's and a dataset may differ on purpose.
"""
from __future__ import annotations

from simclr_jax import config_base, models
from simclr_jax.core.errors import ConfigError

ENCODER = ('model', 'width', 'stem', 'patch_size')
DATA = ('dataset', 'data_dir', 'image_size')


def start_of(config) -> tuple[str, str]:
  """(role, path) of the run a config starts from: ('init_from', ...), distill's ('teacher_from',
  ...) without one, or ('', '') for a stage that starts from nothing. A downstream stage without
  its start is refused with one line."""
  stage = config.get('stage')
  if stage in config_base.DOWNSTREAM and not config.get('init_from'):
    raise ConfigError(f'config.init_from={config.get("init_from")!r} is invalid: {stage} needs a pretraining '
                      'workdir or checkpoint directory: set --config.init_from=runs/pretrain')
  if stage == 'distill' and not config.get('teacher_from'):
    raise ConfigError(f'config.teacher_from={config.get("teacher_from")!r} is invalid: distill needs a '
                      'fine-tuned teacher: set --config.teacher_from=runs/finetune')
  for role in ('init_from', 'teacher_from'):
    if config.get(role):
      return role, config[role]
  return '', ''


def recorded(path: str, role: str) -> dict:
  """The fields of ENCODER and DATA as the newest checkpoint under path records them (the
  encoder's as built: a ResNet's stem resolved, 'auto' for a ViT)."""
  from simclr_jax.train import checkpoint
  meta = checkpoint.read_meta(checkpoint.find_checkpoint(path, role), role)
  spec, saved = meta.get('model') or {}, meta.get('config') or {}
  if not spec or not saved:
    raise ConfigError(f'{role} {path!r} is not a simclr_jax run (its checkpoint has no record of its model '
                      'and config): point it at a simclr_jax workdir')
  vit = spec.get('stem') == 'patch'
  return {'model': spec['model'], 'width': spec['width'], 'stem': 'auto' if vit else spec['stem'],
          'patch_size': spec.get('patch_size') or saved['patch_size'], **{k: saved[k] for k in DATA}}


def check_encoder(init_from: str, recorded_spec: dict, wanted: dict) -> None:
  """CheckpointError naming each ENCODER field of `wanted` (a config's values or an encoder spec)
  that differs from init_from's record (a stem 'auto' is resolved later and not compared)."""
  from simclr_jax.core.errors import CheckpointError
  vit = models.is_vit(recorded_spec.get('model', ''))
  compared = ('model', 'width', 'patch_size' if vit else 'stem')  # a ViT has no stem, a ResNet no patches
  differ = [f'{k}: checkpoint {recorded_spec.get(k)!r}, config {wanted[k]!r}' for k in compared
            if k in wanted and wanted[k] != recorded_spec.get(k) and not (k == 'stem' and wanted[k] == 'auto')]
  if differ:
    raise CheckpointError(f'init_from {init_from!r} has another encoder ({"; ".join(differ)}): '
                          'set the same --config.model, --config.width, --config.stem (a ViT: '
                          '--config.patch_size) as the pretraining run, or leave them unset to take its own')


def fill(config) -> str:
  """Sets the config's unset (None) ENCODER fields from the run it starts from, and its DATA
  fields too when its dataset is unset (else data_dir and image_size take the base config's
  defaults); returns the line that says what was taken ('' when nothing was)."""
  role, path = start_of(config)
  unset = [k for k in ENCODER + DATA if k in config and config[k] is None]
  if not path or not unset and role != 'init_from':
    return ''
  record = recorded(path, role)
  defaults = config_base.base_config('supervised')
  data_from_start = config.get('dataset', '') is None and bool(path)
  taken = [k for k in unset if path and (k in ENCODER or data_from_start)]
  if role == 'init_from':  # explicit values that another encoder would need are refused before anything runs
    check_encoder(path, record, {k: config[k] for k in ENCODER if config[k] is not None})
  for key in unset:
    config[key] = record[key] if key in taken else defaults[key]
  hidden = ('data_dir', 'image_size', 'stem' if models.is_vit(config['model']) else 'patch_size')
  shown = [f'{k} {config[k]:g}' if isinstance(config[k], float) else f'{k} {config[k]}' for k in taken
           if k not in hidden]
  if 'dataset' in taken and config['data_dir']:
    shown[-1] += f' in {config["data_dir"]}'
  if 'dataset' in taken and config['image_size']:
    shown[-1] += f' at {config["image_size"]} px'
  return f'from {role} {path}: {", ".join(shown)} (its record; set --config.<field> to choose another)' if shown else ''
