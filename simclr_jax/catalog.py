"""What exists, read from the code: the methods and their recipe files, the models, the data
sources and the evaluators (`python -m simclr_jax.main --list`), and the configuration reference
(docs/configuration.md, written by scripts/config_reference.py).

    print(listing())                        # the --list text
    markdown = configuration_reference()    # docs/configuration.md, every field of every config

The reference's fields and defaults come from config_base.base_config for each stage, each method's
FIELDS (default, check, whether it defines a run, what it means) and each evaluator type's FIELDS;
the meaning of a base field is the comment beside it in config_base.base_config.
"""
from __future__ import annotations

import glob
import inspect
import os
import re

from simclr_jax import config_base, methods, models
from simclr_jax.data import registry
from simclr_jax.data.augment import AugmentSettings

STAGES = config_base.STAGES


def configs_folder() -> str | None:
  """The checkout's configs/ beside the package (an editable install or a clone), or None."""
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  return folder if os.path.isdir(folder) else None


def recipe_files() -> dict:
  """{method: [configs/<file>.py, ...]}: the pretraining config files of the checkout, by the
  method each one's config sets."""
  folder, out = configs_folder(), {}
  if folder is None:
    return out
  for path in sorted(glob.glob(os.path.join(folder, '*.py'))):
    config = config_base.load_config_file(path)
    if config.stage == 'pretrain':
      out.setdefault(config.method, []).append(f'configs/{os.path.basename(path)}')
  return out


def listing() -> str:
  """The text of --list: methods (recipe files, paper), models, data sources, evaluators, stages."""
  from simclr_jax.evals import TYPES
  recipes = recipe_files()
  lines = ['methods (--config=<recipe file>, or config.method):']
  for name in methods.NAMES:
    files = ', '.join(recipes.get(name, [])) or f"base_config('pretrain', '{name}')"
    lines.append(f'  {name:<13} {files}  ({methods.get(name).PAPER})')
  lines.append('models (config.model): ' + ', '.join(models.MODELS))
  lines.append('data sources (config.dataset): a TFDS name (cifar10, cifar10_jpeg, stl10, ...) or '
               + ', '.join(f'{p}PATH' for p in registry.SOURCES if p))
  lines.append('evaluators (config.evals.<name>.type): ' + ', '.join(
      f'{t} ({cls.protocol})' for t, cls in TYPES.items()))
  lines.append('stages (configs/<stage>.py): ' + ', '.join(STAGES))
  return '\n'.join(lines)


def _comments() -> dict:
  """{field: the comment beside `c.<field> = ...` in config_base.base_config}, continuation lines
  joined."""
  out, last = {}, None
  for line in inspect.getsource(config_base.base_config).splitlines():
    found = re.match(r'\s*c\.(\w+) = .*?(?:#\s*(.*))?$', line)
    if found:
      last = found.group(1)
      if found.group(2):
        out[last] = found.group(2).strip()
      continue
    more = re.match(r'\s*#\s{4,}(.*)$', line)
    if more and last in out:
      out[last] += ' ' + more.group(1).strip()
    else:
      last = None
  return out


def _value(v) -> str:
  if v is None:
    return 'unset'
  if hasattr(v, 'items'):
    return '...'
  return f'`{tuple(v) if isinstance(v, list) else v!r}`'


def _stage_configs() -> dict:
  """{stage: configs/<stage>.py (pretrain: configs/pretrain.py)}, as a user runs them; the base
  config of the stage where the checkout has no configs/."""
  folder = configs_folder()
  path = lambda stage: os.path.join(folder or '', f'{stage}.py')
  return {stage: config_base.load_config_file(path(stage)) if folder and os.path.exists(path(stage))
          else config_base.reference_config({'stage': stage}) for stage in STAGES}


def _base_table(configs: dict) -> list:
  comments = _comments()
  own = {k for name in methods.NAMES for k in config_base.method_fields(name)}
  keys = []
  for config in configs.values():
    keys += [k for k in config.keys() if k not in keys and k not in own and k not in ('augment', 'view2', 'evals')]
  rows = ['| field | stages | default | meaning |', '|---|---|---|---|']
  for key in keys:
    stages = [s for s, c in configs.items() if key in c]
    values = {s: configs[s][key] for s in stages}
    first = values[stages[0]]
    if all(v == first for v in values.values()):
      default = _value(first)
    else:
      default = '; '.join(f'{s} {_value(v)}' for s, v in values.items())
    where = 'all' if len(stages) == len(configs) else ', '.join(stages)
    meaning = comments.get(key, '')
    if key in ('model', 'width', 'stem', 'patch_size', 'dataset', 'data_dir', 'image_size') and None in values.values():
      meaning += ' (finetune, linear_eval, distill: unset takes the value of the run they start from)'
    rows.append(f'| `{key}` | {where} | {default} | {_cell(meaning)} |')
  return rows


def _cell(text: str) -> str:
  """text for a Markdown table cell (its pipes escaped)."""
  return text.strip().replace('|', '\\|')


def _augment_table() -> list:
  rows = ['| field | default |', '|---|---|']
  for key, value in AugmentSettings()._asdict().items():
    rows.append(f'| `augment.{key}` | {_value(value)} |')
  return rows


def _method_tables() -> list:
  from simclr_jax.methods.base import Method, MomentumMethod, MultiCrop
  inherited = {**Method.FIELDS, **MomentumMethod.FIELDS, **MultiCrop.FIELDS}
  out = []
  for name in methods.NAMES:
    cls = methods.get(name)
    recipes = recipe_files().get(name, [])
    recipe_list = ', '.join(f'`{r}`' for r in recipes) or 'none'
    out += ['', f'### {name}', '', f'{methods.get(name).PAPER}. Recipe: {recipe_list}.',
            '', '| field | default | check | defines the run | meaning |', '|---|---|---|---|---|']
    for key, field in cls.FIELDS.items():
      doc = field.doc or inherited.get(key, field).doc
      check = field.check.__name__.replace('_', ' ') if field.check else ''
      defines = 'yes' if field.defines_run else ''
      out.append(f'| `{key}` | {_value(field.default)} | {check} | {defines} | {_cell(doc)} |')
  return out


def _evaluator_tables() -> list:
  from simclr_jax.evals import TYPES
  rows = ['| type | protocol | field | default | meaning |', '|---|---|---|---|---|']
  for t, cls in TYPES.items():
    rows.append(f'| `{t}` | {cls.protocol} | `every_epochs` | | N > 0: every N epochs and at the end; 0: at the end; '
                '-1: never |')
    for key, (default, doc) in cls.FIELDS.items():
      rows.append(f'| `{t}` | {cls.protocol} | `{key}` | {_value(default)} | {doc} |')
  return rows


def _evals_by_stage(configs: dict) -> list:
  rows = ['| stage | evaluators (name: type, every_epochs) |', '|---|---|']
  for stage, config in configs.items():
    evaluators = ', '.join(f'`{n}`: {e.type}, {e.every_epochs}' for n, e in config.evals.items())
    rows.append(f'| {stage} | {evaluators} |')
  return rows


def configuration_reference() -> str:
  """docs/configuration.md: every field of every stage's config, each method's and each
  evaluator's, with defaults (generated: scripts/config_reference.py writes it, a test compares)."""
  configs = _stage_configs()
  parts = [
      '# Configuration reference', '',
      'Every field of every config, generated from the code by `python scripts/config_reference.py` '
      '(the suite fails when this page and the code disagree). Set any field on the command line '
      '(`--config.batch_size=1024`, `--config.augment.hue=0.2`, `--config.evals.knn.k=20`) or in a config file '
      'that starts from `simclr_jax.config_base.base_config(stage, method)`. The recipe files in `configs/` change '
      'only what their recipe changes; the defaults below are written once, in the code.', '',
      '## Fields of every stage', '',
      'Defaults as each stage\'s config file sets them (`configs/pretrain.py`, `finetune.py`, `linear_eval.py`, '
      '`supervised.py`, `distill.py`).', '', *_base_table(configs), '',
      '## Augmentation (`augment.*`, and `view2.*`, `local_view.*`)', '',
      '`augment` holds the first view\'s settings (classifier stages: their random crop and flip use '
      '`crop_padding` and `flip_prob`). `view2.<field>` sets the second view\'s differences from it and a multi-crop '
      'method\'s `local_view.<field>` its small crops\' (unset: as `augment`).', '', *_augment_table(), '',
      '## Evaluators (`evals.<name>`)', '',
      '`config.evals.<name> = evaluator_config(type, every_epochs, **fields)`; several instances of a type may run '
      '(kNN at k=200 and k=20). Each figure is `<name>_<metric>` in results.json.', '', *_evaluator_tables(), '',
      'Each stage\'s evaluators:', '', *_evals_by_stage(configs), '',
      '## Each method\'s fields', '',
      'A pretraining config has its method\'s fields beside the ones above (`base_config(\'pretrain\', method)`). '
      'A field that defines the run cannot change when a workdir resumes.', *_method_tables(), '']
  return '\n'.join(parts)
