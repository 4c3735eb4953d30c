"""TFDS image-classification splits as in-memory uint8 arrays, cached after the first decode.

    ds = load_dataset('cifar10', data_dir='')           # Dataset(name, num_classes, train, test)
    images, labels = ds.train.images, ds.train.labels    # uint8 [N, H, W, 3], int32 [N]

Reading needs no TensorFlow when the data is prepared in array_record format
(tfds.data_source); only downloading and preparing does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simclr_jax.errors import DataError
from simclr_jax.metrics import log


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray              # uint8 [N, H, W, 3]
  labels: np.ndarray | None       # int32 [N]; None for unlabelled images

  def subset(self, keep) -> 'Split':
    return Split(self.images[keep], None if self.labels is None else self.labels[keep])


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  num_classes: int                # 0 when unlabelled
  train: Split
  test: Split | None
  class_names: tuple = ()         # label i is class_names[i], when known


def cache_root() -> str:
  """$SIMCLR_JAX_CACHE, else $XDG_CACHE_HOME/simclr_jax, else ~/.cache/simclr_jax."""
  if os.environ.get('SIMCLR_JAX_CACHE'):
    return os.environ['SIMCLR_JAX_CACHE']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'simclr_jax')


def _tfds():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow_datasets as tfds
  return tfds


def get_builder(name: str, data_dir: str = '', prepare: bool = True):
  """The TFDS builder for `name`, prepared (downloading if needed and possible)."""
  tfds = _tfds()
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f'data_dir {data_dir!r} does not exist: point --config.data_dir at a folder '
                    'that holds prepared TFDS datasets, or leave it empty for the TFDS default')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown dataset {name!r}: use a TFDS name such as cifar10 or cifar100, or '
                    f'one prepared under data_dir {data_dir or "(TFDS default)"}') from None
  except Exception as e:  # a corrupt dataset_info.json or features.json
    raise DataError(f'cannot read dataset {name!r} under {data_dir or "the TFDS default"} '
                    f'({type(e).__name__}: {_first_line(e)}): re-prepare it or fix data_dir') from None
  if not builder.is_prepared():
    if not prepare:
      raise DataError(f'dataset {name!r} is not prepared in {builder.data_dir}')
    _download_and_prepare(builder, name)
  _check_features(builder, name)
  return builder


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ''


def _network_available(url: str = 'https://storage.googleapis.com', timeout: float = 5.0) -> bool:
  """A quick reachability probe, so an offline machine fails in seconds, not after minutes of retries."""
  import urllib.request
  try:
    urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout)
    return True
  except Exception as e:  # an HTTP error status still means the network is there
    import urllib.error
    return isinstance(e, urllib.error.HTTPError)


def _download_and_prepare(builder, name: str) -> None:
  if not _network_available():
    raise DataError(
        f'dataset {name!r} is not prepared in {builder.data_dir} and there is no network to '
        f'download it: on a machine with network access run `tfds build {name} '
        '--file_format=array_record` and copy the folder over, or point --config.data_dir at a '
        'folder that holds it prepared (for example ../shared/data/tfds)')
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:
    raise DataError(
        f'dataset {name!r} is not prepared in {builder.data_dir} and could not be downloaded and '
        f'prepared ({type(e).__name__}: {_first_line(e)}): with network access and tensorflow-cpu '
        f'installed run `tfds build {name} --file_format=array_record`, or point --config.data_dir '
        'at a folder that holds it prepared (for example ../shared/data/tfds)') from None


def _check_features(builder, name: str) -> None:
  features = builder.info.features
  if 'label' not in features or not hasattr(features['label'], 'num_classes'):
    raise DataError(f'dataset {name!r} has no class-label feature named "label": '
                    'use an image-classification dataset')
  image = features['image'] if 'image' in features else None
  shape = tuple(getattr(image, 'shape', ()) or ())
  dtype = str(getattr(image, 'np_dtype', None) or getattr(image, 'dtype', ''))
  if image is None or len(shape) != 3 or shape[2] != 3 or None in shape or 'uint8' not in dtype:
    raise DataError(f'dataset {name!r} images are {shape} {dtype or "missing"}, not HxWx3 uint8: '
                    'use a dataset of fixed-size RGB images')


def _cache_path(builder, split: str) -> str:
  key = hashlib.sha1(os.path.abspath(str(builder.data_dir)).encode()).hexdigest()[:12]
  return os.path.join(cache_root(), builder.name, str(builder.version), key, f'{split}.npz')


def _source_fingerprint(builder, split: str) -> str:
  """What the cached arrays were decoded from: the dataset folder's files (names, sizes,
  modification times) and the split's size. Any change rebuilds the cache."""
  folder = str(builder.data_dir)
  entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)
                   if e.is_file())
  return json.dumps({'split': split, 'examples': builder.info.splits[split].num_examples,
                     'files': entries})


def _decode(raw) -> np.ndarray:
  from PIL import Image
  if isinstance(raw, np.ndarray):
    return raw
  return np.asarray(Image.open(io.BytesIO(raw)).convert('RGB'))


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  tfds = _tfds()
  try:
    source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    records = source.__getitems__(list(range(len(source))))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
      images = np.stack(list(pool.map(_decode, (r['image'] for r in records), chunksize=512)))
    labels = np.asarray([r['label'] for r in records], dtype=np.int32)
  except DataError:
    raise
  except Exception as e:
    raise DataError(f'cannot read split {split!r} of {builder.name} in {builder.data_dir} '
                    f'({type(e).__name__}: {_first_line(e)}): the files look corrupt or truncated; '
                    'delete that folder and prepare the dataset again') from None
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise DataError(f'split {split!r} of {builder.name} decodes to {images.shape} {images.dtype}, '
                    'not [N, H, W, 3] uint8: use a dataset of fixed-size RGB images')
  return images, labels


def _cache_problem(f, fingerprint: str, expected: int, shape: tuple, num_classes: int) -> str:
  """Why a cache file cannot stand for the split ('' when it can)."""
  if 'fingerprint' not in f or str(f['fingerprint']) != fingerprint:
    return 'made from other source files'
  images, labels = f['images'], f['labels']
  if images.dtype != np.uint8 or images.shape != (expected,) + shape:
    return f'images {images.shape} {images.dtype}, expected {(expected,) + shape} uint8'
  if labels.shape != (expected,) or labels.dtype != np.int32:
    return f'labels {labels.shape} {labels.dtype}, expected ({expected},) int32'
  if expected and (labels.min() < 0 or labels.max() >= num_classes):
    return f'labels outside [0, {num_classes})'
  return ''


def load_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [N, H, W, 3], int32 [N]) for one split, from the user cache when it is valid for the
  source (fingerprint, shapes, dtype, label range); otherwise decoded and cached again."""
  path = _cache_path(builder, split)
  fingerprint = _source_fingerprint(builder, split)
  expected = builder.info.splits[split].num_examples
  shape = tuple(builder.info.features['image'].shape)
  num_classes = int(builder.info.features['label'].num_classes)
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        problem = _cache_problem(f, fingerprint, expected, shape, num_classes)
        if not problem:
          return f['images'], f['labels']
    except Exception as e:  # a damaged cache file is simply rebuilt
      problem = f'unreadable ({type(e).__name__})'
    log(f'notice: cache {path} does not match {builder.name}/{split} ({problem}): rebuilding it')
  images, labels = _read_split(builder, split)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}.npz'
    np.savez(tmp, images=images, labels=labels, fingerprint=np.asarray(fingerprint))
    os.replace(tmp, path)
  except OSError:
    pass  # an unwritable cache only costs speed
  return images, labels


def load_dataset(name: str, data_dir: str = '', train_limit: int = 0) -> Dataset:
  """Loads the train and test splits; train_limit > 0 keeps only the first N training images."""
  builder = get_builder(name, data_dir)
  splits = builder.info.splits
  if 'train' not in splits or 'test' not in splits:
    raise DataError(f'dataset {name!r} needs "train" and "test" splits, it has {sorted(splits)}')
  train = Split(*load_split(builder, 'train'))
  test = Split(*load_split(builder, 'test'))
  if train_limit:
    if train_limit > len(train.images):
      log(f'notice: train_limit={train_limit} is above the {len(train.images)} training images of '
          f'{name}: all of them are used')
    train = train.subset(slice(0, train_limit))
  label = builder.info.features['label']
  return Dataset(name, int(label.num_classes), train, test, tuple(label.names))


def balanced_subset(labels: np.ndarray, fraction: float, num_classes: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of `fraction` of `labels`, the same count from every class, fixed by seed.

  Depends only on (labels, fraction, seed), so every method sees the same subset.
  """
  if fraction >= 1.0:
    return np.arange(len(labels))
  rng = np.random.RandomState(seed)
  per_class = max(1, int(round(fraction * len(labels) / num_classes)))
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    chosen.append(rng.permutation(members)[:per_class])
  return np.sort(np.concatenate(chosen))
