"""Datasets as in-memory uint8 arrays, decoded once and cached: TFDS image-classification
datasets and folders of images (simclr_jax.folders), at their own size or resized on load.

    ds = load_dataset('cifar10', data_dir='')           # Dataset(name, num_classes, train, test)
    images, labels = ds.train.images, ds.train.labels    # uint8 [N, H, W, 3], int32 [N] (-1: no label)
    ds = load_dataset('folder:/data/pets', image_size=96)
    ds = load_dataset('stl10', train_split='train+unlabelled', image_size=96)
    ds = load_from_config(config)                        # the fields above from a config

Reading TFDS data needs no TensorFlow when it is prepared in array_record format
(tfds.data_source); only downloading and preparing does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os

import numpy as np

from simclr_jax import images as images_lib
from simclr_jax.errors import DataError, first_line, summary
from simclr_jax.metrics import log


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray              # uint8 [N, H, W, 3]
  labels: np.ndarray              # int32 [N]; -1 where an image has no label

  def subset(self, keep) -> 'Split':
    return Split(self.images[keep], self.labels[keep])

  @property
  def labelled(self) -> bool:
    """Whether every image has a label."""
    return bool(len(self.labels)) and bool(np.all(self.labels >= 0))

  @property
  def nbytes(self) -> int:
    return int(self.images.nbytes + self.labels.nbytes)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  num_classes: int                # 0 when unlabelled
  train: Split
  test: Split | None
  class_names: tuple = ()         # label i is class_names[i], when known

  @property
  def image_size(self) -> int:
    return int(self.train.images.shape[1])

  @property
  def nbytes(self) -> int:
    return self.train.nbytes + (self.test.nbytes if self.test is not None else 0)


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


def get_builder(name: str, data_dir: str = '', prepare: bool = True, image_size: int = 0):
  """The TFDS builder for `name`, prepared (downloading if needed and possible)."""
  tfds = _tfds()
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f'data_dir {data_dir!r} does not exist: point --config.data_dir at a folder '
                    'that holds prepared TFDS datasets, or leave it empty for the TFDS default')
  try:
    with _quiet_absl():
      builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown dataset {name!r}: use a TFDS name such as cifar10 or cifar100, or '
                    f'one prepared under data_dir {data_dir or "(TFDS default)"}') from None
  except Exception as e:  # a corrupt dataset_info.json or features.json
    raise DataError(f'cannot read dataset {name!r} under {data_dir or "the TFDS default"} '
                    f'({summary(e)}): re-prepare it or fix data_dir') from None
  if not builder.is_prepared():
    if not prepare:
      raise DataError(f'dataset {name!r} is not prepared in {builder.data_dir}')
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
        f'prepared ({summary(e)}): with network access and tensorflow-cpu '
        f'installed run `tfds build {name} --file_format=array_record`, or point --config.data_dir '
        'at a folder that holds it prepared (for example ../shared/data/tfds)') from None


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


def _cache_file(*parts: str) -> str:
  return os.path.join(cache_root(), *parts)


def _tfds_fingerprint(builder, split: str, image_size: int) -> str:
  """What the cached arrays were decoded from: the dataset folder's files (names, sizes,
  modification times), the split and the size. Any change rebuilds the cache."""
  folder = str(builder.data_dir)
  entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)
                   if e.is_file())
  return json.dumps({'split': split, 'examples': builder.info.splits[split].num_examples,
                     'image_size': image_size, 'files': entries})


def _cache_problem(f, fingerprint: str, expected: int | None, size: int | None, num_classes: int) -> str:
  """Why a cache file cannot stand for the split ('' when it can)."""
  if 'fingerprint' not in f or str(f['fingerprint']) != fingerprint:
    return 'made from other source files'
  images, labels = f['images'], f['labels']
  n = len(images) if expected is None else expected
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3 or (
      size and images.shape[1:3] != (size, size)):
    return f'images {images.shape} {images.dtype}, expected {n} uint8 images of {size or "any"} px'
  if labels.shape != (n,) or labels.dtype != np.int32:
    return f'labels {labels.shape} {labels.dtype}, expected ({n},) int32'
  if n and (labels.min() < -1 or labels.max() >= max(num_classes, 0)):
    return f'labels outside [-1, {num_classes})'
  return ''


def _cached(path: str, fingerprint: str, describe: str, build, expected=None, size=None,
            num_classes: int = 0) -> dict:
  """{'images', 'labels', 'report'} from the cache file when it is valid for the source
  (fingerprint, shapes, dtype, label range); otherwise from build() and cached again."""
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        problem = _cache_problem(f, fingerprint, expected, size, num_classes)
        if not problem:
          return {'images': f['images'], 'labels': f['labels'],
                  'report': json.loads(str(f['report'])) if 'report' in f else {}}
    except Exception as e:  # a damaged cache file is simply rebuilt
      problem = f'unreadable ({type(e).__name__})'
    log(f'notice: cache {path} does not match {describe} ({problem}): rebuilding it')
  out = build()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}.npz'
    np.savez(tmp, images=out['images'], labels=out['labels'], fingerprint=np.asarray(fingerprint),
             report=np.asarray(json.dumps(out.get('report', {}))))
    os.replace(tmp, path)
  except OSError:
    pass  # an unwritable cache only costs speed
  return out


def _read_tfds_split(builder, split: str, image_size: int) -> dict:
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


def _split_size(builder, split: str, name: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (ValueError, KeyError) as e:
    raise DataError(f'dataset {name!r} has no split {split!r} ({first_line(e)}): use one of '
                    f'{sorted(builder.info.splits)} or a slice such as train[:90%]') from None


def _load_tfds(name, data_dir, image_size, train_split, test_split):
  builder = get_builder(name, data_dir, image_size=image_size)
  num_classes = int(builder.info.features['label'].num_classes)
  key = hashlib.sha1(os.path.abspath(str(builder.data_dir)).encode()).hexdigest()[:12]
  out = {}
  for role, split in (('train', train_split), ('test', test_split)):
    if not split:
      out[role] = None
      continue
    expected = _split_size(builder, split, name)
    path = _cache_file(builder.name, str(builder.version), key, f'{split}-{image_size}.npz')
    out[role] = _cached(path, _tfds_fingerprint(builder, split, image_size), f'{name}/{split}',
                        lambda s=split: _read_tfds_split(builder, s, image_size), expected,
                        image_size or builder.info.features['image'].shape[0], num_classes)
  names = tuple(builder.info.features['label'].names)
  return out, num_classes, names


def _load_folder(name, image_size, test_fraction, max_bad_fraction):
  from simclr_jax import folders
  root = folders.folder_path(name)
  if not image_size:
    raise DataError(f'image_size=0: the images of {name} are resized on load; set '
                    '--config.image_size (for example 32, 96 or 224)')
  layout = folders.scan(root)
  num_classes = len(layout.class_names)
  out = {}
  for role, entries in layout.assign(test_fraction).items():
    if not entries:
      out[role] = None
      continue

    def build(entries=entries):
      decoded = images_lib.decode_all([os.path.join(root, rel) for rel, _ in entries], image_size)
      labels = np.asarray([entries[i][1] for i in decoded.kept], np.int32)
      bad = [(entries[i][0], reason) for i, reason in decoded.bad]
      return {'images': decoded.images, 'labels': labels,
              'report': {'bad': bad, 'files': len(entries), 'upscaled': decoded.upscaled}}

    path = _cache_file('folders', folders.cache_key(root), f'{role}-{image_size}.npz')
    fingerprint = layout.fingerprint(entries, {'image_size': image_size, 'role': role,
                                               'test_fraction': test_fraction})
    out[role] = _cached(path, fingerprint, f'{name} ({role})', build, None, image_size, num_classes)
  _report_bad(name, [s['report'] for s in out.values() if s], max_bad_fraction)
  if layout.skipped:
    log(f'notice: {len(layout.skipped)} files in {root} are not images and were skipped (first: '
        f'{", ".join(layout.skipped[:3])})')
  return out, num_classes, layout.class_names


def _report_bad(name: str, reports: list, max_bad_fraction: float) -> None:
  """One notice naming the unreadable images that were skipped, or an error when they are more
  than max_bad_fraction of the folder's images."""
  bad = [b for r in reports for b in r.get('bad', [])]
  total = sum(r.get('files', 0) for r in reports)
  if not bad:
    return
  first = '; '.join(f'{path}: {reason}' for path, reason in bad[:3])
  if len(bad) > max_bad_fraction * total:
    raise DataError(f'{len(bad)} of the {total} images of {name} cannot be read, more than '
                    f'max_bad_fraction={max_bad_fraction:g} ({first}): remove or replace them, or '
                    'raise --config.max_bad_fraction')
  log(f'notice: {len(bad)} of the {total} images of {name} cannot be read and were skipped ({first})')


def limited_count(train_limit: int, available: int, name: str) -> int:
  """How many training images (the first ones) train_limit > 0 keeps, with a notice when it is
  above the `available` images of dataset `name`."""
  if train_limit > available:
    log(f'notice: train_limit={train_limit} is above the {available} training images of {name}: '
        'all of them are used')
  return min(train_limit, available)


def load_dataset(name: str, data_dir: str = '', train_limit: int = 0, *, image_size: int = 0,
                 train_split: str = 'train', test_split: str = 'test', test_fraction: float = 0.1,
                 max_bad_fraction: float = 0.01) -> Dataset:
  """The training and test splits of a TFDS dataset or a folder (folder:PATH) as uint8 arrays,
  resized to image_size when it is > 0; train_limit > 0 keeps only the first N training images."""
  from simclr_jax import folders
  if folders.is_folder_dataset(name):
    splits, num_classes, class_names = _load_folder(name, image_size, test_fraction, max_bad_fraction)
  else:
    splits, num_classes, class_names = _load_tfds(name, data_dir, image_size, train_split, test_split)
  upscaled = sum(s['report'].get('upscaled', 0) for s in splits.values() if s)
  if upscaled:
    log(f'notice: {upscaled} images of {name} are smaller than image_size={image_size} and were '
        'upscaled')
  train = Split(splits['train']['images'], splits['train']['labels'])
  test = Split(splits['test']['images'], splits['test']['labels']) if splits.get('test') else None
  if train_limit:
    train = train.subset(slice(0, limited_count(train_limit, len(train.images), name)))
  if not np.any(train.labels >= 0):
    num_classes = 0  # nothing to classify: unlabelled pretraining
  return Dataset(name, num_classes, train, test, tuple(class_names))


@dataclasses.dataclass
class Description:
  """A dataset known without decoding it: sizes, classes and random access to its records
  (simclr_jax.records), for the streamed input path and the choice of placement."""
  name: str
  num_classes: int
  class_names: tuple
  image_size: int                 # the side of the decoded (and resized) square images
  train: object                   # records of the training split
  test: object | None

  @property
  def nbytes(self) -> int:
    """The uint8 arrays both splits would take in memory."""
    return self.nbytes_with(0)

  def nbytes_with(self, train_limit: int) -> int:
    """nbytes when only the first train_limit (> 0) training images are used."""
    train = min(train_limit, len(self.train)) if train_limit else len(self.train)
    return (train + (len(self.test) if self.test is not None else 0)) * self.image_size ** 2 * 3


def describe(name: str, data_dir: str = '', *, image_size: int = 0, train_split: str = 'train',
             test_split: str = 'test', test_fraction: float = 0.1) -> Description:
  """Description of a TFDS dataset or folder, reading only metadata and file names."""
  from simclr_jax import folders, records
  if folders.is_folder_dataset(name):
    root = folders.folder_path(name)
    if not image_size:
      raise DataError(f'image_size=0: the images of {name} are resized on load; set '
                      '--config.image_size (for example 32, 96 or 224)')
    layout = folders.scan(root)
    parts = layout.assign(test_fraction)
    test = records.FolderRecords(root, parts['test']) if parts.get('test') else None
    return Description(name, len(layout.class_names), layout.class_names, image_size,
                       records.FolderRecords(root, parts['train']), test)
  builder = get_builder(name, data_dir, image_size=image_size)
  label = builder.info.features['label']
  size = image_size or int(builder.info.features['image'].shape[0])
  made = {}
  for role, split in (('train', train_split), ('test', test_split)):
    made[role] = (records.TfdsRecords(name, data_dir, split, _split_size(builder, split, name))
                  if split else None)
  return Description(name, int(label.num_classes), tuple(label.names), size, made['train'],
                     made['test'])


def record_labels(records) -> np.ndarray:
  """Every label of a split's records (-1: none): a folder's come from its layout; a TFDS split's
  are read once (every record) and cached beside the decoded arrays."""
  from simclr_jax import records as records_lib
  if not isinstance(records, records_lib.TfdsRecords):
    return records.labels()
  builder = get_builder(records.name, records.data_dir)
  key = hashlib.sha1(os.path.abspath(str(builder.data_dir)).encode()).hexdigest()[:12]
  path = _cache_file(builder.name, str(builder.version), key, f'{records.split}-labels.npz')
  fingerprint = _tfds_fingerprint(builder, records.split, -1)

  def build():
    labels = records.labels()
    return {'images': np.zeros((len(labels), 1, 1, 3), np.uint8), 'labels': labels}
  return _cached(path, fingerprint, f'{records.name}/{records.split} labels', build, len(records),
                 1, int(builder.info.features['label'].num_classes))['labels']


def describe_from_config(config, role: str = 'train', image_size: int | None = None) -> Description:
  """describe() of the dataset a config names, or of its eval_dataset (role 'eval')."""
  image_size = config.image_size if image_size is None else image_size
  if role == 'eval':
    return describe(config.eval_dataset, config.data_dir, image_size=image_size,
                    test_fraction=config.test_fraction)
  return describe(config.dataset, config.data_dir, image_size=image_size,
                  train_split=config.train_split, test_split=config.test_split,
                  test_fraction=config.test_fraction)


def load_from_config(config, role: str = 'train', image_size: int | None = None) -> Dataset:
  """The dataset a config names (role 'train'), or its eval_dataset with that dataset's own
  train and test splits (role 'eval'), resized to image_size (default config.image_size)."""
  image_size = config.image_size if image_size is None else image_size
  if role == 'eval':
    return load_dataset(config.eval_dataset, config.data_dir, image_size=image_size,
                        test_fraction=config.test_fraction, max_bad_fraction=config.max_bad_fraction)
  return load_dataset(config.dataset, config.data_dir, config.train_limit,
                      image_size=image_size, train_split=config.train_split,
                      test_split=config.test_split, test_fraction=config.test_fraction,
                      max_bad_fraction=config.max_bad_fraction)


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
