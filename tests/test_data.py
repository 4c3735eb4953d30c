import json
import os
import shutil

import numpy as np
import pytest

from conftest import DATA_DIR, DATASET
from simclr_jax import data
from simclr_jax.errors import DataError


def test_loads_uint8_splits_and_limits_train():
  ds = data.load_dataset(DATASET, DATA_DIR, train_limit=1000)
  assert ds.train.images.shape == (1000, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert ds.test.images.shape == (10000, 32, 32, 3) and ds.test.labels.dtype == np.int32
  assert ds.num_classes == 10 and set(np.unique(ds.test.labels)) == set(range(10))


def test_second_load_comes_from_the_user_cache_not_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  before = sorted(os.listdir(os.path.join(DATA_DIR, DATASET, '1.0.0')))
  first = data.load_dataset(DATASET, DATA_DIR)
  decoded = []
  original = data.images_lib.decode_all
  monkeypatch.setattr(data.images_lib, 'decode_all', lambda *a, **k: decoded.append(1) or original(*a, **k))
  second = data.load_dataset(DATASET, DATA_DIR)
  assert sorted(os.listdir(os.path.join(DATA_DIR, DATASET, '1.0.0'))) == before
  cached = [f for _, _, files in os.walk(tmp_path / 'cache') for f in files]
  assert sorted(cached) == ['test-0.npz', 'train-0.npz']
  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert not decoded  # the second load read the cache: nothing was decoded


def test_balanced_subset_is_balanced_reproducible_and_seeded():
  labels = np.repeat(np.arange(10), 500)
  a = data.balanced_subset(labels, 0.1, 10, seed=0)
  assert np.array_equal(a, data.balanced_subset(labels, 0.1, 10, seed=0))
  assert np.all(np.bincount(labels[a]) == 50)
  assert not np.array_equal(a, data.balanced_subset(labels, 0.1, 10, seed=1))
  tiny = data.balanced_subset(labels, 0.001, 10)
  assert np.all(np.bincount(labels[tiny]) == 1)
  assert len(data.balanced_subset(labels, 1.0, 10)) == 5000


def test_unknown_dataset_and_missing_data_dir():
  with pytest.raises(DataError, match="unknown dataset 'no_such_set'"):
    data.load_dataset('no_such_set', DATA_DIR)
  with pytest.raises(DataError, match='does not exist'):
    data.load_dataset(DATASET, '/no/such/folder')


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
    data.load_dataset(DATASET, str(root))


def test_missing_label_feature_is_refused(tmp_path):
  root, folder = _copy_dataset(tmp_path)
  _edit_features(folder, lambda f: f.pop('label'))
  with pytest.raises(DataError, match='no class-label feature'):
    data.load_dataset(DATASET, str(root))


def test_truncated_data_file_is_reported(tmp_path, monkeypatch):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  root, folder = _copy_dataset(tmp_path)
  record = folder / f'{DATASET}-test.array_record-00000-of-00001'
  record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
  with pytest.raises(DataError, match='corrupt or truncated'):
    data.load_dataset(DATASET, str(root))
