"""Every bad input: one line naming the culprit and the fix, nothing in the workdir overwritten.
Validation is tested as the functions the CLI calls; the CLI itself once per kind of failure
(exit 2 and its single stderr line; exits 3 and 75 are in test_reliability and test_faults)."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import DATA_DIR, DATASET, ROOT, error_line, run_cli, tiny_config
from simclr_jax import validate
from simclr_jax.train import checkpoint
from simclr_jax.stages import classify
from simclr_jax.data import registry
from simclr_jax.core import parallel
from simclr_jax.stages import workdir as workdir_lib
from simclr_jax.core.errors import CheckpointError, ConfigError, DataError


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


def _one_line(excinfo, *fragments):
  text = str(excinfo.value)
  assert '\n' not in text and ': ' in text, text
  for fragment in fragments:
    assert fragment in text, text
  return text


def _raw(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'simclr_jax.main', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.e2e
def test_the_cli_refuses_bad_flags_and_values_with_one_line_and_writes_nothing(tmp_path):
  """Exit 2 and one stderr line, for a flag absl rejects and for a value validation rejects."""
  line = _fails(run_cli('pretrain', tmp_path / 'w', image_sise=32), '--config.image_sise',
                'no such config field', 'did you mean --config.image_size?')
  assert '\\' not in line  # plain text, nothing escaped
  _fails(run_cli('pretrain', tmp_path / 'w', epochs=-1), 'config.epochs=-1')
  assert not (tmp_path / 'w').exists()  # refused before the workdir was touched
  help_proc = _raw('--help')
  assert help_proc.returncode == 0 and '--workdir' in help_proc.stdout


def _parse(*args):
  """The CLI's one error line for these arguments; they fail while the flags are parsed, before
  anything heavy is imported (about a second each)."""
  proc = _raw(*args, '--workdir=/nonexistent/never-written')
  return _fails(proc)[len('error: '):]


def test_flag_errors_name_the_field_the_file_and_the_type():
  config = os.path.join(ROOT, 'configs', 'pretrain.py')
  line = _parse(f'--config={config}', '--config.evals.bogus.every_epochs=1')
  assert line.startswith('--config.evals.bogus: there is no such config field'), line
  assert 'did you mean --config.evals.knn' in _parse(f'--config={config}', '--config.evals.kn.k=3')
  assert _parse(f'--config={config}', '--config.augment.glow=1').startswith('--config.augment.glow:')
  assert "config file 'configs/nope.py' cannot be loaded" in _parse('--config=configs/nope.py')
  for value in ('abc', '1.5'):
    line = _parse(f'--config={config}', f'--config.epochs={value}')
    assert f'--config.epochs={value}' in line and 'give a value of the type' in line, line
  bad = os.path.join(ROOT, 'tests', 'raising_config.py')
  assert _parse(f'--config={bad}') == (f"config file '{bad}' raised RuntimeError: forgot to set the "
                                       'dataset: fix get_config() in that file')


@pytest.mark.parametrize('field,value,fragment', [
    ('epochs', -1, 'config.epochs=-1'),
    ('batch_size', 0, 'config.batch_size=0'),
    ('dtype', 'float16', "config.dtype='float16'"),
    ('model', 'resnet7', "config.model='resnet7'"),
    ('optimizer', 'rmsprop', "config.optimizer='rmsprop'"),
    ('label_fraction', 1.5, 'config.label_fraction=1.5'),
    ('temperature', 0.0, 'config.temperature=0.0'),
    ('augment.flip_prob', 2.0, 'config.augment.flip_prob=2.0'),
    ('view2.solarize_prob', 1.5, 'config.view2.solarize_prob=1.5'),
    ('learning_rate', float('inf'), 'config.learning_rate=inf is invalid: use a finite number'),
    ('augment.brightness', float('nan'), 'config.augment.brightness=nan'),
    ('augment.std', (0.0, 0.0, 0.0), 'config.augment.std=(0.0, 0.0, 0.0) is invalid'),
    ('augment.std', (0.2, -0.1, 0.2), 'deviations greater than 0'),
    ('evals.knn.k', 0, 'config.evals.knn.k=0'),
    ('evals.knn.every_epochs', -2, 'config.evals.knn.every_epochs=-2'),
    ('evals.knn.type', 'knm', "config.evals.knn.type='knm'"),
    ('seed', 2**64, 'use a seed from 0 to 4294967295'),
    ('label_seed', 99999999999, 'config.label_seed=99999999999'),
    ('projection_dims', (2048, 0), 'config.projection_dims=(2048, 0)'),
    ('method', 'byol', 'start from --config=configs/byol.py'),
    ('data_dir', '/no/such/folder', 'config.data_dir'),
    ('augment.blur_sigma', (-1.0, -0.5), 'config.augment.blur_sigma=(-1.0, -0.5) is invalid: use (min, max) with 0 < min'),
    ('augment.blur_sigma', (2.0, 0.1), 'config.augment.blur_sigma=(2.0, 0.1)'),
    ('view2.blur_sigma', (0.0, 1.0), 'config.view2.blur_sigma=(0.0, 1.0)'),
    ('augment.crop_scale', (0.08, 0.5, 1.0), 'config.augment.crop_scale=(0.08, 0.5, 1.0) is invalid: give two numbers'),
    ('augment.crop_scale', (0.5, 1.5), 'config.augment.crop_scale=(0.5, 1.5)'),
    ('augment.crop_scale', (0.9, 0.2), 'config.augment.crop_scale=(0.9, 0.2)'),
    ('augment.crop_ratio', (1.3, 0.7), 'config.augment.crop_ratio=(1.3, 0.7)'),
    ('view2.crop_ratio', (0.0, 1.0), 'config.view2.crop_ratio=(0.0, 1.0)'),
    ('augment.hue', 0.7, 'config.augment.hue=0.7'),
    ('augment.contrast', -0.1, 'config.augment.contrast=-0.1'),
    ('momentum', 1.5, 'config.momentum=1.5 is invalid: use a momentum in [0, 1)'),
    ('finetune_from_head_layer', 2, 'config.finetune_from_head_layer=2 is invalid: the projector has 2 layers'),
    ('model', 'vit_huge', "config.model='vit_huge' is invalid: use one of resnet10"),
    ('layer_decay', 1.5, 'config.layer_decay=1.5 is invalid: use a decay in (0, 1]'),
    ('batch_chunks', 3, 'config.batch_chunks=3 is invalid: use a divisor of batch_size=64, such as 2 (1: the whole'),
    ('batch_chunks', 0, 'config.batch_chunks=0 is invalid: use a divisor of batch_size=64, such as 1'),
    ('layer_decay', 0.75, "config.layer_decay=0.75 is invalid: it decays a ViT's blocks and model='resnet10' has none"),
    ('adam_beta2', 1.0, 'config.adam_beta2=1.0 is invalid: use a decay in (0, 1)'),
    ('gradient_clip_norm', -1.0, 'config.gradient_clip_norm=-1.0 is invalid: it must be 0 or more'),
    ('patch_size', 0, 'config.patch_size=0 is invalid: it must be greater than 0'),
])
def test_values_refused_before_anything_runs(field, value, fragment):
  with pytest.raises(ConfigError, match=re.escape(fragment)) as e:
    validate.validate_config(tiny_config('pretrain', **{field: value}))
  _one_line(e)


@pytest.mark.parametrize('config,field,value,fragment', [
    ('pretrain_v2', 'finetune_from_head_layer', 5, 'config.finetune_from_head_layer=5 is invalid: the projector has 3 '
     'layers (projection_dims=(512, 512, 128)), of which 2 hidden: use a value from 0 to 2'),
    ('byol', 'final_tau', 1.5, 'config.final_tau=1.5 is invalid: use a decay in [0, 1]'),
    ('byol', 'base_tau', -0.1, 'config.base_tau=-0.1 is invalid: use a decay in [0, 1]'),
    ('mocov3', 'base_tau', 0.999, 'config.base_tau=0.999 is invalid: use 0 <= base_tau <= final_tau (final_tau=0.99)'),
    ('mae', 'model', 'resnet18', "config.model='resnet18' is invalid: MAE masks a Vision Transformer's patches"),
    ('mae', 'mask_ratio', 1.0, 'config.mask_ratio=1.0 is invalid: use a fraction in (0, 1)'),
    ('mae', 'decoder_dim', 30, 'config.decoder_dim=30 is invalid: use a multiple of decoder_heads=16'),
    ('pretrain', 'patch_size', 5, 'config.patch_size=5 is invalid: use a divisor of image_size=32'),
    ('dino', 'local_crop_size', 18, 'config.local_crop_size=18 is invalid: a ViT cuts whole patches: use a multiple '
     'of patch_size=4, such as 16'),
])
def test_method_fields_name_the_field_the_user_set(config, field, value, fragment):
  extra = {'final_tau': 0.99} if config == 'mocov3' else {}
  if field in ('patch_size', 'local_crop_size') or (config == 'mae' and field != 'model'):  # a ViT (on 32 px)
    extra = {'model': 'vit_nano', 'image_size': 32, **({'local_crops': 2} if config == 'dino' else {})}
  with pytest.raises(ConfigError, match=re.escape(fragment)) as e:
    validate.validate_config(tiny_config(config, **{field: value, **extra}))
  _one_line(e)


def test_short_runs_of_the_default_config_are_accepted():
  from simclr_jax import config_base
  config = config_base.load_config_file(os.path.join(ROOT, 'configs', 'pretrain.py'))
  config.epochs = 2
  validate.validate_config(config)  # warmup_epochs=10 is shortened at run time, not refused


def test_batch_size_not_divisible_by_device_count():
  class FakeMesh:
    class devices:
      size = 4
  with pytest.raises(ConfigError, match='batch_size=66 is not divisible by the 4 devices') as e:
    parallel.check_batch_size(66, FakeMesh)
  _one_line(e, 'multiple of 4')
  # batch_chunks divides the batch (validate) but not each device's share of it
  with pytest.raises(ConfigError, match='config.batch_chunks=8 is invalid: each of the 4 devices holds 12 images') as e:
    parallel.check_chunks(48, 8, FakeMesh)
  _one_line(e, 'use a divisor of 12, such as 6')
  parallel.check_chunks(48, 3, FakeMesh)


def test_unknown_dataset_missing_data_dir_and_no_network(tmp_path, monkeypatch):
  with pytest.raises(DataError) as e:
    registry.get('no_such_set', DATA_DIR)
  _one_line(e, "unknown dataset 'no_such_set'")
  with pytest.raises(DataError) as e:
    registry.get(DATASET, str(tmp_path / 'nowhere'))
  _one_line(e, 'data_dir', 'does not exist')
  from simclr_jax.data import tfds_source
  monkeypatch.setattr(tfds_source, '_network_available', lambda *a, **k: False)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError) as e:
    registry.get('cifar10', str(tmp_path / 'empty'))
  _one_line(e, "dataset 'cifar10' is not prepared", 'tfds build cifar10', 'data_dir',
            '--config.dataset=cifar10_jpeg --config.data_dir=../shared/data/tfds')


def test_init_from_that_points_at_nothing_an_empty_run_or_the_wrong_kind(supervised_workdir, tmp_path):
  with pytest.raises(CheckpointError) as e:
    checkpoint.find_checkpoint(str(tmp_path / 'nothing'))
  _one_line(e, 'init_from', 'does not exist')
  (tmp_path / 'emptyrun').mkdir()
  with pytest.raises(CheckpointError) as e:
    checkpoint.find_checkpoint(str(tmp_path / 'emptyrun'))
  _one_line(e, 'holds no complete checkpoint')
  with pytest.raises(CheckpointError) as e:
    classify.restore_pretrained(str(supervised_workdir), {'model': 'resnet10', 'width': 0.125, 'stem': 'cifar'}, 0)
  _one_line(e, "is a 'supervised' run, not a pretraining run")


def test_init_from_missing_for_finetune():
  with pytest.raises(ConfigError) as e:
    validate.validate_config(tiny_config('linear_eval', init_from=''))
  _one_line(e, 'config.init_from', '--config.init_from=')


def test_init_from_another_width_architecture_or_head_layer(pretrained_workdir):
  restore = lambda wanted, k=0: classify.restore_pretrained(str(pretrained_workdir), wanted, k)
  with pytest.raises(CheckpointError) as e:
    restore({'model': 'resnet10', 'width': 0.25, 'stem': 'cifar'})
  _one_line(e, 'another encoder', 'width: checkpoint 0.125, config 0.25')
  with pytest.raises(CheckpointError) as e:
    restore({'model': 'resnet34', 'width': 0.125, 'stem': 'cifar'})
  _one_line(e, "model: checkpoint 'resnet10', config 'resnet34'")
  with pytest.raises(CheckpointError) as e:
    restore({'model': 'resnet10', 'width': 0.125, 'stem': 'cifar'}, 2)
  _one_line(e, 'finetune_from_head_layer=2', 'has 2 layers, of which 1 hidden', 'from 0 to 1')


def test_init_from_a_corrupt_or_truncated_checkpoint(pretrained_workdir, tmp_path):
  copy = tmp_path / 'pre'
  shutil.copytree(pretrained_workdir, copy)
  step_dir = checkpoint.find_checkpoint(str(copy))
  for dirpath, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      path = os.path.join(dirpath, f)
      if os.path.getsize(path) > 1000:
        with open(path, 'r+b') as fh:
          fh.truncate(os.path.getsize(path) // 3)
  with pytest.raises(CheckpointError) as e:
    checkpoint.restore_encoder(str(copy))
  assert step_dir in _one_line(e, 'cannot be read', 'corrupt')


def test_workdir_that_is_not_writable_or_inside_its_data(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  with pytest.raises(ConfigError) as e:
    workdir_lib.prepare(str(blocker / 'w'), tiny_config())
  _one_line(e, 'is not writable', '--workdir')
  (tmp_path / 'pics' / 'cats').mkdir(parents=True)
  for workdir, fragment in ((tmp_path / 'pics' / 'run', 'is inside the dataset folder'),
                            (tmp_path / 'pics', 'is inside the dataset folder'),
                            (tmp_path, 'is around the dataset folder')):
    with pytest.raises(ConfigError) as e:
      workdir_lib.prepare(str(workdir), tiny_config(dataset=f'folder:{tmp_path / "pics"}', image_size=32))
    _one_line(e, fragment, 'choose a --workdir outside it')
  assert os.listdir(tmp_path / 'pics') == ['cats'] and not (tmp_path / 'config.json').exists()


@pytest.mark.e2e
def test_workdir_with_a_run_of_another_config_is_refused_unless_fresh(pretrained_workdir, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(pretrained_workdir, workdir)
  before = _snapshot(workdir)
  _fails(run_cli('pretrain', workdir, width=0.25, batch_size=32),
         'holds a run with another config', 'width: 0.125 -> 0.25', 'batch_size: 64 -> 32', '--fresh')
  assert _snapshot(workdir) == before
  (workdir / 'config.json').unlink()  # the checkpoint remembers the config
  with pytest.raises(ConfigError) as e:
    workdir_lib.prepare(str(workdir), tiny_config(batch_size=32))
  _one_line(e, 'holds a run with another config', 'batch_size: 64 -> 32')
  before = _snapshot(workdir)
  workdir_lib.prepare(str(workdir), tiny_config(width=0.25, batch_size=32, epochs=1), fresh=True)
  assert _snapshot(workdir / 'previous-1') == before  # the old run is kept, not deleted
  assert json.loads((workdir / 'config.json').read_text())['width'] == 0.25


def test_resume_from_a_corrupt_checkpoint_names_it_and_keeps_it(pretrained_workdir, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(pretrained_workdir, workdir)
  step_dir = checkpoint.find_checkpoint(str(workdir))
  for dirpath, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      if f.startswith('ocdbt') or 'manifest' in f or f.endswith('.process_0'):
        os.remove(os.path.join(dirpath, f))
  for dirpath, dirs, files in os.walk(os.path.join(step_dir, 'state')):
    for d in dirs:
      if d.startswith('ocdbt') or d == 'd':
        shutil.rmtree(os.path.join(dirpath, d))
  before = _snapshot(workdir)
  from conftest import train_in_process
  with pytest.raises(CheckpointError) as e:
    train_in_process(tiny_config(epochs=2), workdir)
  _one_line(e, f'checkpoint {step_dir} is corrupt', 'its arrays cannot be read', 'resume from checkpoint 8')
  assert _snapshot(workdir) == before


def test_resume_from_a_checkpoint_of_an_older_state_layout_says_to_start_afresh(pretrained_workdir, tmp_path):
  """A run saved before the optimiser held its schedule (no state_layout in its meta) is refused in
  one line naming --fresh, and nothing in the workdir changes."""
  workdir = tmp_path / 'w'
  shutil.copytree(pretrained_workdir, workdir)
  step_dir = checkpoint.find_checkpoint(str(workdir))
  meta_file = os.path.join(step_dir, 'meta', 'metadata')
  with open(meta_file) as f:
    meta = json.load(f)
  assert meta.pop('state_layout') == checkpoint.STATE_LAYOUT  # every save and update records it
  with open(meta_file, 'w') as f:
    json.dump(meta, f)
  before = _snapshot(workdir)
  from conftest import train_in_process
  with pytest.raises(CheckpointError) as e:
    train_in_process(tiny_config(epochs=2), workdir)
  _one_line(e, f'checkpoint {step_dir}', 'layout 1', '--fresh')
  assert _snapshot(workdir) == before


def test_a_workdir_inside_a_runs_checkpoints_names_the_run_and_writes_nothing(pretrained_workdir, tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(pretrained_workdir, run)
  before = _snapshot(run)
  for inside in (run / 'checkpoints', run / 'checkpoints' / '16', run / 'checkpoints' / 'new'):
    with pytest.raises(ConfigError) as e:
      workdir_lib.prepare(str(inside), tiny_config())
    where = 'the checkpoints folder' if inside.name == 'checkpoints' else 'inside the checkpoints folder'
    _one_line(e, f'--workdir {str(inside)!r} is {where} of the run in {str(run)!r}', f'pass --workdir={run} to resume')
  assert _snapshot(run) == before and not (run / 'checkpoints' / '.lock').exists()
  assert not (run / 'checkpoints' / 'new').exists()


def test_a_run_refused_before_it_starts_leaves_no_workdir_and_keeps_what_was_there(tmp_path):
  """The teacher that is not there (distill), or a dataset that is not: what prepare and the data
  check wrote is removed, the folders prepare made too; an existing folder keeps what it held."""
  from simclr_jax import main
  new = tmp_path / 'runs' / 'student'
  config = tiny_config('distill', teacher_from=str(tmp_path / 'no-teacher'))
  workdir_lib.prepare(str(new), config)
  assert sorted(os.listdir(new)) == ['.lock', 'config.json']
  with pytest.raises(CheckpointError, match='teacher_from .* does not exist'):
    main.train_and_evaluate(config, str(new))
  workdir_lib.release_unstarted(str(new))
  assert os.listdir(tmp_path) == []  # runs/ too: this process made it
  kept = tmp_path / 'mine'
  kept.mkdir()
  (kept / 'notes.txt').write_text('the user\'s')
  config = tiny_config(dataset='no_such_set')
  workdir_lib.prepare(str(kept), config)
  with pytest.raises(DataError):
    main.train_and_evaluate(config, str(kept))
  workdir_lib.release_unstarted(str(kept))
  assert os.listdir(kept) == ['notes.txt']
  workdir_lib.prepare(str(kept), tiny_config())  # the lock was released with the files
  workdir_lib.release_unstarted(str(kept))


@pytest.mark.e2e
def test_the_cli_leaves_no_workdir_after_a_refusal(tmp_path):
  _fails(run_cli('pretrain', tmp_path / 'runs' / 'w', dataset='no_such_set'), "unknown dataset 'no_such_set'")
  assert not (tmp_path / 'runs').exists()
