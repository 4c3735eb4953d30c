"""TFDS image-classification datasets as a data source (data.registry's source of plain names).

    source = describe('cifar10', data_dir='', image_size=0, splits={'train': 'train', 'test': 'test'})

Reading needs no TensorFlow when the data is prepared in array_record format (tfds.data_source);
only downloading and preparing does.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os

import numpy as np

from simclr_jax.data import decode_cache, images as images_lib, records as records_lib, sources
from simclr_jax.core.errors import DataError, first_line, summary


PREFIX = ''                # a TFDS name: anything no other source claims
NEEDS_IMAGE_SIZE = False   # a TFDS image dataset has one size


def local_folder(name: str) -> None:
  """TFDS data lives under data_dir (kept apart through config.data_dir)."""
  return None


def _tfds():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow_datasets as tfds
  return tfds


def get_builder(name: str, data_dir: str = '', image_size: int = 0):
  """The TFDS builder for `name`, prepared (downloading if needed and possible)."""
  tfds = _tfds()
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f'data_dir {data_dir!r} does not exist: point --config.data_dir at a folder '
                    'that holds prepared TFDS datasets, or leave it empty for the TFDS default')
  try:
    with _quiet_absl():
      builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown dataset {name!r}: use a TFDS name such as cifar10 or cifar100, '
                    f'folder:PATH, or one prepared under data_dir {data_dir or "(TFDS default)"}') from None
  except PermissionError as e:
    raise DataError(f'cannot read the dataset folder of {name!r} ({e.strerror}: {e.filename}): fix its '
                    'permissions or point --config.data_dir elsewhere') from None
  except Exception as e:  # a corrupt dataset_info.json or features.json
    raise DataError(f'cannot read dataset {name!r} under {data_dir or "the TFDS default"} '
                    f'({summary(e)}): re-prepare it or fix data_dir') from None
  if not builder.is_prepared():
    _download_and_prepare(builder, name)
  _check_features(builder, name, image_size)
  return builder


@contextlib.contextmanager
def _quiet_absl():
  """Keeps TFDS's absl warnings (an unprepared variant folder, ...) off the terminal."""
  from absl import logging
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _network_available(url: str = 'https://storage.googleapis.com', timeout: float = 5.0) -> bool:
  """A quick reachability probe, so an offline machine fails in seconds, not after minutes of retries."""
  import urllib.request
  try:
    urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout)
    return True
  except Exception as e:  # an HTTP error status still means the network is there
    import urllib.error
    return isinstance(e, urllib.error.HTTPError)


OFFLINE_HINT = ('or point --config.data_dir at a folder that holds it prepared (for this repository\'s '
                'copy: --config.dataset=cifar10_jpeg --config.data_dir=../shared/data/tfds)')


def _download_and_prepare(builder, name: str) -> None:
  import importlib.util
  if importlib.util.find_spec('tensorflow') is None:  # reading prepared data needs none; TFDS's builders do
    raise DataError(f'dataset {name!r} is not prepared in {builder.data_dir}, and preparing it needs TensorFlow, '
                    f'which is not installed: pip install tensorflow-cpu, {OFFLINE_HINT}')
  if not _network_available():
    raise DataError(
        f'dataset {name!r} is not prepared in {builder.data_dir} and there is no network to '
        f'download it: on a machine with network access run `tfds build {name} '
        f'--file_format=array_record` and copy the folder over, {OFFLINE_HINT}')
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:
    raise DataError(
        f'dataset {name!r} is not prepared in {builder.data_dir} and could not be downloaded and '
        f'prepared ({summary(e)}): with network access and tensorflow-cpu installed run `tfds build '
        f'{name} --file_format=array_record`, {OFFLINE_HINT}') from None


def _check_features(builder, name: str, image_size: int = 0) -> None:
  features = builder.info.features
  if 'label' not in features or not hasattr(features['label'], 'num_classes'):
    raise DataError(f'dataset {name!r} has no class-label feature named "label": '
                    'use an image-classification dataset')
  image = features['image'] if 'image' in features else None
  shape = tuple(getattr(image, 'shape', ()) or ())
  dtype = str(getattr(image, 'np_dtype', None) or getattr(image, 'dtype', ''))
  if image is None or len(shape) != 3 or shape[2] != 3 or 'uint8' not in dtype:
    raise DataError(f'dataset {name!r} images are {shape} {dtype or "missing"}, not HxWx3 uint8: '
                    'use a dataset of RGB images')
  if None in shape and not image_size:
    raise DataError(f'dataset {name!r} has images of several sizes {shape}: set '
                    '--config.image_size to resize them on load (for example 96 or 224)')


def _split_size(builder, split: str, name: str) -> int:
  try:
    size = builder.info.splits[split].num_examples
  except (ValueError, KeyError) as e:
    raise DataError(f'dataset {name!r} has no split {split!r} ({first_line(e)}): use one of '
                    f'{sorted(builder.info.splits)} or a slice such as train[:90%]') from None
  if not size:
    raise DataError(f'split {split!r} of dataset {name!r} holds no images: use a split or slice '
                    'with images, such as train[:90%]')
  return size


def _files(builder) -> list:
  """(name, size, modification time) of the prepared dataset's files."""
  folder = str(builder.data_dir)
  return sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file())


def describe(name: str, *, data_dir: str = '', image_size: int = 0, splits: dict, test_fraction: float = 0.1
             ) -> sources.Source:
  """The Source of a TFDS dataset, reading only its metadata; splits maps 'train' and 'test' to
  TFDS split strings ('' for none); test_fraction does not apply (TFDS splits are given)."""
  builder = get_builder(name, data_dir, image_size)
  label = builder.info.features['label']
  size = image_size or int(builder.info.features['image'].shape[0])
  files = _files(builder)
  records, identity, manifest = {}, {}, {}
  for role, split in splits.items():
    if not split:
      records[role] = identity[role] = manifest[role] = None
      continue
    count = _split_size(builder, split, name)
    records[role] = records_lib.TfdsRecords(name, data_dir, split, count)
    manifest[role] = [f'{name} {builder.version} {split} {count}'] + [' '.join(map(str, f)) for f in files]
    identity[role] = {'count': count, 'hash': _hash(manifest[role])}
  num_classes = int(label.num_classes)
  key = hashlib.sha1(os.path.abspath(str(builder.data_dir)).encode()).hexdigest()[:12]

  return sources.Source(name, num_classes, tuple(label.names), size, records, identity, manifest,
                        TfdsReader(builder, name, splits, identity, image_size, size, num_classes, records, key))


class TfdsReader:
  """Decodes a TFDS split once into the user cache (beside it, every label, read once)."""

  def __init__(self, builder, name, splits, identity, image_size, size, num_classes, records, key):
    self.builder, self.name, self.splits, self.identity = builder, name, splits, identity
    self.image_size, self.size, self.num_classes, self.records, self.key = image_size, size, num_classes, records, key

  def decode(self, role: str) -> dict:
    split, count, builder = self.splits[role], self.identity[role]['count'], self.builder
    path = decode_cache.cache_file(builder.name, str(builder.version), self.key, f'{split}-{self.image_size}.npz')
    fingerprint = json.dumps({'identity': self.identity[role], 'image_size': self.image_size})
    return decode_cache.cached(path, fingerprint, f'{self.name}/{split}',
                               lambda: _read_split(builder, split, self.image_size), count, self.size, self.num_classes)

  def labels(self, role: str) -> np.ndarray:
    return _labels(self.builder, self.records[role], self.identity[role], self.num_classes, self.key)


def _hash(lines: list) -> str:
  return hashlib.sha1('\n'.join(lines).encode('utf-8', 'surrogateescape')).hexdigest()


def _read_split(builder, split: str, image_size: int) -> dict:
  tfds = _tfds()
  try:
    source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    records = source.__getitems__(list(range(len(source))))
    decoded = images_lib.decode_all([r['image'] for r in records], image_size)
    labels = np.asarray([r['label'] for r in records], dtype=np.int32)
  except ValueError as e:  # images of several sizes
    raise DataError(f'split {split!r} of {builder.name} has {e}') from None
  except Exception as e:
    raise DataError(f'cannot read split {split!r} of {builder.name} in {builder.data_dir} '
                    f'({summary(e)}): the files look corrupt or truncated; '
                    'delete that folder and prepare the dataset again') from None
  if decoded.bad:
    index, reason = decoded.bad[0]
    raise DataError(f'split {split!r} of {builder.name} in {builder.data_dir}: {len(decoded.bad)} '
                    f'images cannot be decoded (record {index}: {reason}): the files look corrupt; '
                    'prepare the dataset again')
  return {'images': decoded.images, 'labels': labels, 'report': {'upscaled': decoded.upscaled}}


def _labels(builder, records, identity: dict, num_classes: int, key: str) -> np.ndarray:
  """Every label of a split, read once (each record) and cached beside the decoded arrays."""
  path = decode_cache.cache_file(builder.name, str(builder.version), key, f'{records.split}-labels.npz')

  def build():
    labels = records.labels()
    return {'images': np.zeros((len(labels), 1, 1, 3), np.uint8), 'labels': labels}
  return decode_cache.cached(path, json.dumps(identity), f'{records.name}/{records.split} labels', build,
                             len(records), 1, num_classes)['labels']
