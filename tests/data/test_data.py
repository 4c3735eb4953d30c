"""The data-source lookup: TFDS splits described without decoding, decoded once into the user
cache, label fractions, and the faults of a prepared dataset."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import DATA_DIR, DATASET
from simclr_jax.data import decode_cache, registry, sources, tfds_source
from simclr_jax.core.errors import DataError


def test_a_source_is_described_without_decoding_and_decodes_uint8_splits(monkeypatch):
  calls = []
  original = tfds_source._read_split
  monkeypatch.setattr(tfds_source, '_read_split', lambda *a: calls.append(a) or original(*a))
  source = registry.get(DATASET, DATA_DIR, test_split='test[:1000]')
  assert (source.size('train'), source.size('test'), source.image_size, source.num_classes) == (50000, 1000, 32, 10)
  assert source.nbytes(512) == (512 + 1000) * 32 * 32 * 3 and source.class_names[0] == 'airplane'
  assert source.identity['train']['count'] == 50000 and source.identity['train']['hash']
  assert not calls  # described from metadata alone
  ds = registry.load(DATASET, DATA_DIR, train_limit=1000)
  assert ds.train.images.shape == (1000, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert ds.test.images.shape == (10000, 32, 32, 3) and ds.test.labels.dtype == np.int32
  assert ds.num_classes == 10 and set(np.unique(ds.test.labels)) == set(range(10))


def test_second_load_comes_from_the_user_cache_not_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  before = sorted(os.listdir(os.path.join(DATA_DIR, DATASET, '1.0.0')))
  first = registry.load(DATASET, DATA_DIR, train_split='train[:2000]', test_split='test[:500]')
  decoded = []
  original = tfds_source.images_lib.decode_all
  monkeypatch.setattr(tfds_source.images_lib, 'decode_all', lambda *a, **k: decoded.append(1) or original(*a, **k))
  second = registry.load(DATASET, DATA_DIR, train_split='train[:2000]', test_split='test[:500]')
  assert sorted(os.listdir(os.path.join(DATA_DIR, DATASET, '1.0.0'))) == before
  cached = [f for _, _, files in os.walk(tmp_path / 'cache') for f in files]
  assert sorted(cached) == ['test[:500]-0.npz', 'train[:2000]-0.npz']
  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert not decoded  # the second load read the cache: nothing was decoded


def test_balanced_subset_is_balanced_reproducible_and_seeded():
  labels = np.repeat(np.arange(10), 500)
  a = sources.balanced_subset(labels, 0.1, 10, seed=0)
  assert np.array_equal(a, sources.balanced_subset(labels, 0.1, 10, seed=0))
  assert np.all(np.bincount(labels[a]) == 50)
  assert not np.array_equal(a, sources.balanced_subset(labels, 0.1, 10, seed=1))
  tiny = sources.balanced_subset(labels, 0.001, 10)
  assert np.all(np.bincount(labels[tiny]) == 1)
  assert len(sources.balanced_subset(labels, 1.0, 10)) == 5000


def test_select_rows_applies_train_limit_then_the_label_fraction(capsys):
  source = registry.get(DATASET, DATA_DIR, test_split='')
  assert sources.select_rows(source) is None
  np.testing.assert_array_equal(sources.select_rows(source, 1000), np.arange(1000))
  rows = sources.select_rows(source, 1000, 0.1, label_seed=0)
  assert len(rows) == 100 and rows.max() < 1000
  assert np.all(np.bincount(source.labels('train')[rows], minlength=10) == 10)
  assert sources.select_rows(source, 60000) is None
  assert 'notice: train_limit=60000 is above the 50,000 training images' in capsys.readouterr().out


def test_unknown_dataset_and_missing_data_dir():
  with pytest.raises(DataError, match="unknown dataset 'no_such_set'"):
    registry.get('no_such_set', DATA_DIR)
  with pytest.raises(DataError, match='does not exist'):
    registry.get(DATASET, '/no/such/folder')
  with pytest.raises(DataError, match=r"has no split 'validation'"):
    registry.get(DATASET, DATA_DIR, train_split='validation')
  with pytest.raises(DataError, match=r"split 'train\[:0\]' of dataset 'cifar10_jpeg' holds no images"):
    registry.get(DATASET, DATA_DIR, train_split='train[:0]')


def _copy_dataset(tmp_path):
  target = tmp_path / 'tfds'
  shutil.copytree(os.path.join(DATA_DIR, DATASET), target / DATASET)
  return target, target / DATASET / '1.0.0'


def _edit_features(folder, edit):
  path = folder / 'features.json'
  spec = json.loads(path.read_text())
  edit(spec['featuresDict']['features'])
  path.write_text(json.dumps(spec))


def test_images_that_are_not_hxwx3_uint8_are_refused(tmp_path):
  root, folder = _copy_dataset(tmp_path)
  _edit_features(folder, lambda f: f['image']['image']['shape'].update(dimensions=['32', '32', '1']))
  with pytest.raises(DataError, match='not HxWx3 uint8'):
    registry.get(DATASET, str(root))


def test_missing_label_feature_is_refused(tmp_path):
  root, folder = _copy_dataset(tmp_path)
  _edit_features(folder, lambda f: f.pop('label'))
  with pytest.raises(DataError, match='no class-label feature'):
    registry.get(DATASET, str(root))


@pytest.mark.parametrize('split', ['train', 'test'])
def test_truncated_data_file_is_reported(tmp_path, monkeypatch, split):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  root, folder = _copy_dataset(tmp_path)
  record = folder / f'{DATASET}-{split}.array_record-00000-of-00001'
  record.write_bytes(record.read_bytes()[: record.stat().st_size // 2 if split == 'test' else 100_000])
  with pytest.raises(DataError, match=rf"split '{split}'.*corrupt or truncated"):
    registry.get(DATASET, str(root)).decode(split)


def test_an_unreadable_dataset_folder_is_one_line(tmp_path, monkeypatch):
  """A dataset folder without read permission (simulated: this machine's tests may run as root,
  whom permissions do not stop)."""
  root, folder = _copy_dataset(tmp_path)
  import tensorflow_datasets as tfds

  def denied(*args, **kwargs):
    raise PermissionError(13, 'Permission denied', str(folder))
  monkeypatch.setattr(tfds, 'builder', denied)
  with pytest.raises(DataError, match=r"cannot read the dataset folder of 'cifar10_jpeg' \(Permission denied"):
    registry.get(DATASET, str(root))


def test_a_resume_on_another_tfds_version_is_refused_naming_both(tmp_path, capsys):
  """The checkpoint remembers the TFDS version and split it trained on; a resume that finds
  another version (here the run trained on a pretended 0.9.0) names both."""
  from simclr_jax.stages import workdir as workdir_lib
  from simclr_jax.core.errors import ConfigError
  now = registry.get(DATASET, DATA_DIR, test_split='test[:1000]')
  old_lines = [now.manifest['train'][0].replace(' 1.0.0 ', ' 0.9.0 ')] + now.manifest['train'][1:]
  meta = tmp_path / 'checkpoints' / '8' / 'meta'
  (tmp_path / 'checkpoints' / '8' / 'state').mkdir(parents=True)
  meta.mkdir()
  old_identity = {'train': {'count': 50000, 'hash': 'from-0.9.0'}, 'test': now.identity['test']}
  (meta / 'metadata').write_text(json.dumps({'step': 8, 'steps_per_epoch': 4, 'data': {'dataset': old_identity}}))
  (tmp_path / workdir_lib.MANIFEST).write_text(json.dumps({'dataset': {'train': old_lines}}))
  with pytest.raises(ConfigError) as e:
    workdir_lib.check_data(str(tmp_path), {'dataset': now})
  assert str(e.value).startswith('the train split of cifar10_jpeg (config.dataset) changed since checkpoint 8 '
                                 '(cifar10_jpeg 0.9.0 train 50000 -> cifar10_jpeg 1.0.0 train 50000): restore it, '
                                 'or pass --config.allow_data_change=True'), str(e.value)
  workdir_lib.check_data(str(tmp_path), {'dataset': now}, allow_change=True)
  assert 'cifar10_jpeg 0.9.0 train 50000 -> cifar10_jpeg 1.0.0 train 50000' in capsys.readouterr().out


def test_a_cache_that_cannot_be_written_leaves_nothing_and_says_so(tmp_path, monkeypatch, capsys):
  def full_disk(path, **arrays):
    with open(path, 'wb') as f:
      f.write(b'half a cache file')
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(decode_cache.np, 'savez', full_disk)
  assert not decode_cache.write(str(tmp_path / 'x.npz'), images=np.zeros((2, 1, 1, 3), np.uint8))
  assert os.listdir(tmp_path) == []  # no temporary file left behind
  out = capsys.readouterr().out
  assert 'notice: cannot write the decode cache' in out and 'No space left on device' in out


def test_prepared_data_is_read_without_tensorflow_and_preparing_without_it_says_what_to_install(tmp_path, monkeypatch):
  """TensorFlow stays importable in the test extra (TFDS's builders need it to prepare a dataset),
  but the reading path must not use it: a subprocess in which `import tensorflow` fails reads
  cifar10_jpeg's array_record files into a fresh cache, and asks for TensorFlow by name only when a
  dataset would have to be prepared."""
  import subprocess
  import sys
  from conftest import ROOT
  code = f'''
import importlib.machinery, sys
class WithoutTensorFlow(importlib.machinery.PathFinder):  # as if tensorflow were not installed
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    return None if name.split('.')[0] == 'tensorflow' else super().find_spec(name, path, target)
sys.meta_path = [WithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from simclr_jax.data import registry
from simclr_jax.core.errors import DataError
ds = registry.load({DATASET!r}, {DATA_DIR!r}, train_split='train[:64]', test_split='test[:32]')
print(ds.train.images.shape, ds.test.images.shape, int(ds.train.images.std() > 10), 'tensorflow' in sys.modules)
'''
  env = {**os.environ, 'SIMCLR_JAX_CACHE': str(tmp_path / 'cache')}
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split('\n')[0] == '(64, 32, 32, 3) (32, 32, 32, 3) 1 False'
  assert os.listdir(tmp_path / 'cache')  # decoded from the TFDS files, not an earlier cache
  import importlib.util
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'tensorflow' else find_spec(name, *a))
  with pytest.raises(DataError, match=r"dataset 'cifar10' is not prepared in /nowhere, and preparing it needs "
                                      r"TensorFlow, which is not installed: pip install tensorflow-cpu"):
    tfds_source._download_and_prepare(type('Builder', (), {'data_dir': '/nowhere'})(), 'cifar10')
