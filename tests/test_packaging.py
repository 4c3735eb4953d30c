"""The package as a user installs it: a wheel built from the project (not the editable checkout),
installed apart, imported and run from outside the checkout with a config file of the clone."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import MECHANICS, MULTI_DEVICE_XLA_FLAGS, ROOT, cli_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _package_modules(root):
  """Every module of the simclr_jax tree under root, as dotted names."""
  out = []
  for dirpath, _, files in os.walk(os.path.join(root, 'simclr_jax')):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, '.')
        out.append(rel[:-len('.__init__')] if rel.endswith('.__init__') else rel)
  return sorted(out)


def test_the_wheel_holds_every_module_and_runs_a_stage_from_another_directory(tmp_path):
  # The wheel is built from a copy of what pyproject.toml packages, so the checkout gets no build/.
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(os.path.join(ROOT, 'simclr_jax'), src / 'simclr_jax',
                  ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'))
  pip = [sys.executable, '-m', 'pip', '-q', '--disable-pip-version-check']
  subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'dist'), str(src)],
                 check=True, capture_output=True, timeout=300)
  wheel, = (tmp_path / 'dist').glob('simclr_jax-*.whl')
  in_wheel = sorted(n[:-3].replace('/', '.').removesuffix('.__init__') for n in zipfile.ZipFile(wheel).namelist()
                    if n.startswith('simclr_jax/') and n.endswith('.py'))
  modules = _package_modules(ROOT)
  assert in_wheel == modules and 'simclr_jax.methods.byol' in modules  # every subpackage, none left out
  site = tmp_path / 'site'
  subprocess.run(pip + ['install', '--no-deps', '--target', str(site), str(wheel)], check=True, capture_output=True,
                 timeout=300)
  # From a folder outside the checkout, with the installed copy first on the path (the editable
  # install's finder comes after it): every module imports from the installed files.
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {**os.environ, 'PYTHONPATH': str(site)}
  check = ('import importlib, json, sys; mods = json.loads(sys.argv[1]); '
           'print(json.dumps({m: importlib.import_module(m).__file__ for m in mods}))')
  proc = subprocess.run([sys.executable, '-c', check, json.dumps(modules)], cwd=elsewhere, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  files = json.loads(proc.stdout)
  assert all(f.startswith(str(site)) for f in files.values()), files
  help_proc = subprocess.run([sys.executable, '-m', 'simclr_jax.main', '--help'], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)
  assert help_proc.returncode == 0 and '--workdir' in help_proc.stdout, help_proc.stderr[-3000:]
  # A tiny BYOL run, its config file the clone's, from that folder: 2 steps of 64 images, small
  # heads, compiled at XLA's CPU level 0 (a program no other test shares).
  args = cli_args('byol', elsewhere / 'run', train_limit=128, epochs=1, projection_dims=(64, 32),
                  predictor_dims=(64, 32), **MECHANICS, **{'evals.knn.every_epochs': -1,
                                                           'evals.online_linear.every_epochs': -1})
  env['XLA_FLAGS'] = f"{os.environ['XLA_FLAGS']} {MULTI_DEVICE_XLA_FLAGS}"
  run = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((elsewhere / 'run' / 'results.json').read_text())
  assert results['method'] == 'byol' and results['steps'] == 2 and results['final_loss'] is not None
