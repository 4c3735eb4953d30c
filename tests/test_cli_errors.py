"""Every bad input through the CLI: exit status 2, one line naming the culprit and the fix,
nothing in the workdir overwritten."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import DATA_DIR, DATASET, ROOT, error_line, run_cli


def _snapshot(folder):
  """{relative path: sha1} of every file under folder but the workdir lock."""
  out = {}
  for dirpath, _, files in os.walk(folder):
    for f in files:
      if f == '.lock':
        continue
      path = os.path.join(dirpath, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, folder)] = hashlib.sha1(fh.read()).hexdigest()
  return out


def _fails(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  line = error_line(proc)
  assert line.startswith('error: ') and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert [l for l in proc.stderr.splitlines() if l.strip()] == [line], proc.stderr[-3000:]  # one line
  for fragment in fragments:
    assert fragment in line, line
  return line


def _raw(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'simclr_jax.main', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, **(env or {})})


def test_unknown_config_field(tmp_path):
  _fails(run_cli('pretrain', tmp_path / 'w', no_such_field=1), '--config.no_such_field', 'no such config field')
  _fails(_raw('--config=configs/pretrain.py', f'--workdir={tmp_path}', '--config.augment.glow=1'),
         '--config.augment.glow')


def test_unknown_config_file(tmp_path):
  _fails(_raw('--config=configs/nope.py', f'--workdir={tmp_path}'), "config file 'configs/nope.py'")


@pytest.mark.parametrize('field,value,fragment', [
    ('epochs', 'abc', '--config.epochs=abc'),
    ('batch_size', '1.5', '--config.batch_size=1.5'),
])
def test_wrong_types(tmp_path, field, value, fragment):
  _fails(_raw('--config=configs/pretrain.py', f'--workdir={tmp_path}', f'--config.{field}={value}'), fragment)


@pytest.mark.parametrize('field,value,fragment', [
    ('epochs', -1, 'config.epochs=-1'),
    ('batch_size', 0, 'config.batch_size=0'),
    ('dtype', 'float16', "config.dtype='float16'"),
    ('model', 'resnet7', "config.model='resnet7'"),
    ('optimizer', 'rmsprop', "config.optimizer='rmsprop'"),
    ('label_fraction', 1.5, 'config.label_fraction=1.5'),
    ('temperature', 0.0, 'config.temperature=0.0'),
    ('augment.flip_prob', 2.0, 'config.augment.flip_prob=2.0'),
])
def test_out_of_range_values(tmp_path, field, value, fragment):
  _fails(run_cli("pretrain", tmp_path / "w", **{field: value}), fragment)
  assert not (tmp_path / 'w').exists()  # refused before the workdir was touched


@pytest.mark.parametrize('field,value,fragment', [
    ('learning_rate', float('inf'), 'config.learning_rate=inf is invalid: use a finite number'),
    ('augment.brightness', float('nan'), 'config.augment.brightness=nan'),
    ('augment.std', (0.0, 0.0, 0.0), 'config.augment.std=(0.0, 0.0, 0.0) is invalid'),
    ('augment.std', (0.2, -0.1, 0.2), 'deviations greater than 0'),
    ('evals.knn.k', 0, 'config.evals.knn.k=0'),
    ('evals.knn.every_epochs', -2, 'config.evals.knn.every_epochs=-2'),
])
def test_values_refused_before_anything_runs(field, value, fragment):
  from conftest import tiny_config
  from simclr_jax import validate
  from simclr_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=re.escape(fragment)):
    validate.validate_config(tiny_config('pretrain', **{field: value}))


def test_short_runs_of_the_default_config_are_accepted():
  from conftest import ROOT
  from simclr_jax import config_base, validate
  config = config_base.load_config_file(os.path.join(ROOT, 'configs', 'pretrain.py'))
  config.epochs = 2
  validate.validate_config(config)  # warmup_epochs=10 is shortened at run time, not refused


def test_batch_size_not_divisible_by_device_count(tmp_path):
  proc = run_cli('pretrain', tmp_path / 'w', batch_size=66,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  _fails(proc, 'batch_size=66 is not divisible by the 4 devices', 'multiple of 4')


def test_unknown_dataset(tmp_path):
  _fails(run_cli('pretrain', tmp_path / 'w', dataset='no_such_set'), "unknown dataset 'no_such_set'")


def test_data_dir_that_does_not_exist(tmp_path):
  _fails(run_cli('pretrain', tmp_path / 'w', data_dir=tmp_path / 'nowhere'), 'data_dir', 'does not exist')


def test_no_network_and_no_prepared_data(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = run_cli('pretrain', tmp_path / 'w', dataset='cifar10', data_dir=empty,
                 env={'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9'})
  _fails(proc, "dataset 'cifar10' is not prepared", 'tfds build cifar10', 'data_dir')


def _dataset_copy(tmp_path):
  root = tmp_path / 'tfds'
  shutil.copytree(os.path.join(DATA_DIR, DATASET), root / DATASET)
  return root, root / DATASET / '1.0.0'


def _edit_features(folder, edit):
  spec = json.loads((folder / 'features.json').read_text())
  edit(spec['featuresDict']['features'])
  (folder / 'features.json').write_text(json.dumps(spec))


def test_images_not_hxwx3_uint8(tmp_path):
  root, folder = _dataset_copy(tmp_path)
  _edit_features(folder, lambda f: f['image']['image']['shape'].update(dimensions=['32', '32', '1']))
  _fails(run_cli('pretrain', tmp_path / 'w', data_dir=root), 'not HxWx3 uint8')


def test_missing_label_feature(tmp_path):
  root, folder = _dataset_copy(tmp_path)
  _edit_features(folder, lambda f: f.pop('label'))
  _fails(run_cli('pretrain', tmp_path / 'w', data_dir=root), 'no class-label feature')


def test_truncated_data_file(tmp_path):
  root, folder = _dataset_copy(tmp_path)
  record = folder / f'{DATASET}-train.array_record-00000-of-00001'
  record.write_bytes(record.read_bytes()[:100_000])
  proc = run_cli('pretrain', tmp_path / 'w', data_dir=root, env={'SIMCLR_JAX_CACHE': str(tmp_path / 'c')})
  _fails(proc, "split 'train'", 'corrupt or truncated')


def test_init_from_that_points_at_nothing(tmp_path):
  _fails(run_cli('finetune', tmp_path / 'w', init_from=tmp_path / 'nothing'), 'init_from', 'does not exist')
  (tmp_path / 'emptyrun').mkdir()
  _fails(run_cli('finetune', tmp_path / 'w', init_from=tmp_path / 'emptyrun'), 'holds no complete checkpoint')


def test_init_from_missing_for_finetune(tmp_path):
  _fails(run_cli('linear_eval', tmp_path / 'w'), 'config.init_from', '--config.init_from=')


def test_init_from_another_width_or_architecture(pretrained_workdir, tmp_path):
  _fails(run_cli('finetune', tmp_path / 'a', init_from=pretrained_workdir, width=0.25),
         'another encoder', 'width: checkpoint 0.125, config 0.25')
  _fails(run_cli('linear_eval', tmp_path / 'b', init_from=pretrained_workdir, model='resnet34'),
         "model: checkpoint 'resnet18', config 'resnet34'")


def test_init_from_a_run_of_another_kind(tmp_path):
  sup = tmp_path / 'sup'
  assert run_cli('supervised', sup, epochs=1).returncode == 0
  _fails(run_cli('finetune', tmp_path / 'w', init_from=sup), "is a 'supervised' run, not a pretraining run")


def test_init_from_a_corrupt_checkpoint(pretrained_workdir, tmp_path):
  copy = tmp_path / 'pre'
  shutil.copytree(pretrained_workdir, copy)
  step_dir = checkpoint_step_dir(copy)
  for dirpath, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      path = os.path.join(dirpath, f)
      if os.path.getsize(path) > 1000:
        with open(path, 'r+b') as fh:
          fh.truncate(os.path.getsize(path) // 3)
  line = _fails(run_cli('finetune', tmp_path / 'w', init_from=copy), 'cannot be read', 'corrupt')
  assert step_dir in line


def checkpoint_step_dir(workdir):
  from simclr_jax import checkpoint
  return checkpoint.find_checkpoint(str(workdir))


def test_workdir_that_is_not_writable(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  _fails(run_cli('pretrain', blocker / 'w'), 'is not writable', '--workdir')


def test_workdir_with_a_run_of_another_config_is_refused_unless_fresh(pretrained_workdir, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(pretrained_workdir, workdir)
  before = _snapshot(workdir)
  _fails(run_cli('pretrain', workdir, width=0.25, batch_size=32),
                'holds a run with another config', 'width: 0.125 -> 0.25', 'batch_size: 64 -> 32', '--fresh')
  assert _snapshot(workdir) == before
  (workdir / 'config.json').unlink()  # the checkpoint remembers the config
  _fails(run_cli('pretrain', workdir, batch_size=32), 'holds a run with another config', 'batch_size: 64 -> 32')
  before = _snapshot(workdir)
  proc = run_cli('pretrain', workdir, '--fresh', width=0.25, batch_size=32, epochs=1, train_limit=128)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _snapshot(workdir / 'previous-1') == before  # the old run is kept, not deleted
  assert json.loads((workdir / 'config.json').read_text())['width'] == 0.25


def test_resume_from_a_corrupt_checkpoint_names_it_and_keeps_it(pretrained_workdir, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(pretrained_workdir, workdir)
  step_dir = checkpoint_step_dir(workdir)
  for dirpath, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      if f.startswith('ocdbt') or 'manifest' in f or f.endswith('.process_0'):
        os.remove(os.path.join(dirpath, f))
  for dirpath, dirs, files in os.walk(os.path.join(step_dir, 'state')):
    for d in dirs:
      if d.startswith('ocdbt') or d == 'd':
        shutil.rmtree(os.path.join(dirpath, d))
  before = _snapshot(workdir)
  _fails(run_cli('pretrain', workdir, epochs=2), f'checkpoint {step_dir}', 'cannot be restored')
  assert _snapshot(workdir) == before
