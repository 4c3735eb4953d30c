"""The documentation against the code: the configuration reference is the code's, every command the
pages print names a config file, script and fields that exist, the README links every page, and no
user-facing page names a commit, a test or a session. (The loading code of portable-weights.md runs
as printed in test_portable.py.)"""
import os
import re
import shlex

import pytest

import snippets
from conftest import ROOT
from simclr_jax import catalog, config_base, methods, models

PAGES = snippets.pages()


def _text(page):
  with open(os.path.join(ROOT, page)) as f:
    return f.read()


def test_the_configuration_reference_is_the_codes():
  page = _text('docs/configuration.md')
  for stage in config_base.STAGES:  # every field, so that a failure names the first one missing
    config = config_base.reference_config({'stage': stage})
    for key in config.keys():
      names = [f'{key}.{k}' for k in config[key].keys()] if key in ('augment', 'evals') else [key]
      for name in names if key != 'view2' else ():
        shown = name if key != 'evals' else f'{config.evals[name.split(".")[1]].type}'
        assert f'`{shown}`' in page, f'docs/configuration.md lacks {name}: run python scripts/config_reference.py'
  for name in methods.NAMES:
    for key in methods.get(name).FIELDS:
      assert f'`{key}`' in page, f'docs/configuration.md lacks {name}.{key}: run python scripts/config_reference.py'
  stale = 'docs/configuration.md is stale: run python scripts/config_reference.py'
  assert page == catalog.configuration_reference(), stale


def test_list_names_every_method_with_its_recipe_model_source_and_evaluator(monkeypatch, capsys):
  from simclr_jax import main
  exits = []
  monkeypatch.setattr(os, '_exit', lambda code: exits.append(code) or (_ for _ in ()).throw(SystemExit(code)))
  with pytest.raises(SystemExit):
    main.parse_flags(['simclr_jax.main', '--list'])
  out = capsys.readouterr().out
  assert exits == [0]
  for name in methods.NAMES:
    assert re.search(rf'^  {name} +configs/', out, re.M), name
  assert 'configs/dino.py, configs/dino_multicrop.py' in out and 'configs/pretrain.py' in out
  assert all(m in out for m in models.MODELS) and 'folder:PATH' in out and 'linear (features)' in out


def _commands():
  """(page, argv) of every `python -m simclr_jax.main ...` line the pages print (continuations joined)."""
  out = []
  for page in PAGES:
    text = _text(page).replace('\\\n', ' ')
    for line in text.splitlines():
      line = line.strip()
      line = line[1:].split('`')[0] if line.startswith('`') else line  # an inline code span: itself only
      for part in line.split(' && '):
        if part.startswith('python -m simclr_jax.main'):
          out.append((page, shlex.split(part.split('  #')[0])))
  return out


def test_every_printed_command_names_a_config_file_and_fields_that_exist():
  """Each command's --config file exists and each --config.<field>=value is a field of it whose
  type the value parses as: a renamed field or a moved recipe cannot rot a page."""
  commands = _commands()
  assert len(commands) > 10
  for page, argv in commands:
    flags = dict(a[2:].split('=', 1) for a in argv[3:] if a.startswith('--') and '=' in a)
    if 'config' not in flags:
      assert '--list' in argv or '--help' in argv, (page, argv)
      continue
    path = os.path.join(ROOT, flags['config'].replace('<clone>/', ''))
    assert os.path.exists(path), (page, flags['config'])
    config = config_base.load_config_file(path)
    for key, value in flags.items():
      if not key.startswith('config.'):
        continue
      field = key[len('config.'):]
      node = config
      for part in field.split('.')[:-1]:
        node = node[part]
      assert field.split('.')[-1] in node, (page, field)


def test_the_readme_is_a_front_page_that_links_every_page():
  readme = _text('README.md')
  assert len(readme.splitlines()) <= 260
  for page in PAGES[1:]:
    assert f'({page})' in readme, f'README.md does not link {page}'
  assert 'pip install -e . && python -m simclr_jax.main --config=configs/pretrain.py --workdir=runs/pretrain' in readme
  assert "pip install -e '.[test]' && python -m pytest -q tests" in readme


@pytest.mark.parametrize('page', PAGES)
def test_a_user_facing_page_names_no_commit_test_or_session(page):
  text = _text(page)
  prose = re.sub(r'```.*?```', '', text, flags=re.S)  # code blocks may name files of tests/ to run
  assert not re.search(r'\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b', prose), 'a commit hash'
  # (config fields that start with test_ are not tests)
  assert not re.search(r'\btest_(?!split|fraction|top1|loss)\w+|tests/\w+\.py', prose), 'a test name'
  assert not re.search(r'\b(issue|session) \d+|\bthis session\b', prose, re.I), 'an issue or session'


def test_the_own_config_file_of_getting_started_is_a_valid_byol_recipe(tmp_path):
  """The config file getting-started.md prints, as printed: base_config's BYOL fields with its change,
  a config the stages accept."""
  from simclr_jax import validate
  config = snippets.run(snippets.marked('docs/getting-started.md')['own_config'], tmp_path)['get_config']()
  assert config.method == 'byol' and config.epochs == 100 and 'predictor_dims' in config
  validate.validate_config(config)
