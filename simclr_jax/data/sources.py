"""What every data source gives (data.registry looks them up): a Source, a dataset described once
without decoding (sizes, labels, image size, identity), whose Reader decodes a split on demand
through the user cache and whose Records give random access to it; and the subsets a run uses.

    source = registry.get('cifar10', data_dir='', image_size=0)   # a Source
    source.image_size, source.num_classes, source.size('train')
    split = source.decode('train')                           # Split: uint8 images, int32 labels
    rows = select_rows(source, train_limit=1000, label_fraction=0.1, label_seed=0)
    source = in_memory('toy', Split(images, labels))         # arrays already in memory

An unreadable image of a folder is kept as a black image without a label (-1), on the device
path as on the streamed one, so both train on the same images; losses and accuracies skip it.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from simclr_jax.core.errors import DataError
from simclr_jax.core.log import log, plural


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray              # uint8 [N, H, W, 3]
  labels: np.ndarray              # int32 [N]; -1 where an image has no label

  def subset(self, keep) -> 'Split':
    return Split(self.images[keep], self.labels[keep])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Both splits decoded (load())."""
  name: str
  num_classes: int                # 0 when unlabelled
  train: Split
  test: Split | None
  class_names: tuple = ()


class Records(Protocol):
  """Random access to the records of a split, as the streamed path's workers read them
  (data.records: TfdsRecords, FolderRecords): (what decodes to the image, label) by index."""
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> tuple: ...
  def get_many(self, indices) -> list: ...
  def describe(self, index: int) -> str: ...
  def labels(self, workers: int = 0) -> np.ndarray: ...


class Reader(Protocol):
  """A source's decoding of a whole split: decode(role) -> {'images': uint8 [N, H, W, 3], 'labels':
  int32 [N], 'report': {'bad': [(name, reason)], 'upscaled': n}} (cached), labels(role) -> every
  label without decoding."""
  def decode(self, role: str) -> dict: ...
  def labels(self, role: str) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
  """A dataset known without decoding it. records: role ('train', 'test') -> random access to
  its records (simclr_jax.data.records), None for a missing test split; identity: role -> {'count',
  'hash'} of what the split is made of (files, sizes, modification times; a TFDS version and
  split), which a checkpoint remembers; manifest: role -> one line per file, to name changes."""
  name: str
  num_classes: int                # 0: no labels
  class_names: tuple
  image_size: int                 # the side of the decoded (and resized) square images
  records: dict                   # role -> Records, or None
  identity: dict
  manifest: dict
  reader: Reader = dataclasses.field(repr=False)

  def has(self, role: str) -> bool:
    return self.records.get(role) is not None

  def size(self, role: str) -> int:
    return len(self.records[role]) if self.has(role) else 0

  def labels(self, role: str) -> np.ndarray:
    """Every label of a split (-1: none), without decoding an image."""
    return self.reader.labels(role)

  @property
  def labelled(self) -> bool:
    return self.num_classes > 0

  def nbytes(self, train_count: int | None = None) -> int:
    """The uint8 arrays both splits take in memory, the training split cut to train_count."""
    train = self.size('train') if train_count is None else train_count
    return (train + self.size('test')) * self.image_size ** 2 * 3

  def decode(self, role: str, max_bad_fraction: float = 0.01) -> Split:
    """The split as uint8 arrays (cached), an unreadable image black and unlabelled; a notice
    names the unreadable and the upscaled images, or a DataError when the unreadable ones are
    more than max_bad_fraction of the split."""
    out = self.reader.decode(role)
    report = out.get('report', {})
    check_bad(f'{self.name} ({role})', [tuple(b) for b in report.get('bad', [])], len(out['labels']),
              max_bad_fraction)
    if report.get('upscaled'):
      log(f'notice: {plural(report["upscaled"], "image")} of {self.name} ({role}) are smaller than '
          f'{self.image_size} px and were upscaled')
    return Split(out['images'], out['labels'])


def check_bad(name: str, bad: list, total: int, max_bad_fraction: float, new: int | None = None) -> None:
  """One notice naming the unreadable images (new: how many of them are newly found), or a
  DataError when they are more than max_bad_fraction of `total`."""
  if not bad:
    return
  first = '; '.join(f'{path}: {reason}' for path, reason in bad[:3])
  if len(bad) >= total:
    raise DataError(f'none of the {plural(total, "image")} of {name} can be read ({first}): check the '
                    'files and their permissions, or point at another dataset')
  if len(bad) > max_bad_fraction * total:
    raise DataError(f'{len(bad)} of the {plural(total, "image")} of {name} cannot be read, more than '
                    f'max_bad_fraction={max_bad_fraction:g} ({first}): remove or replace them, or raise '
                    '--config.max_bad_fraction')
  log(f'notice: {len(bad)} of the {plural(total, "image")} of {name} cannot be read; each is replaced by '
      f'a black image without a label ({first})')


def limited_count(train_limit: int, available: int, name: str) -> int:
  """How many training images (the first ones) train_limit keeps (0: all), with a notice when it
  is above the `available` images of dataset `name`."""
  if not train_limit:
    return available
  if train_limit > available:
    log(f'notice: train_limit={train_limit} is above the {plural(available, "training image")} of '
        f'{name}: all of them are used')
  return min(train_limit, available)


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


def select_rows(source: Source, train_limit: int = 0, label_fraction: float = 1.0,
                label_seed: int = 0) -> np.ndarray | None:
  """The training records a run uses: the first train_limit (0: all), then a class-balanced
  label_fraction of them; None for every record."""
  available = source.size('train')
  count = limited_count(train_limit, available, source.name)
  rows = None if count == available else np.arange(count)
  if label_fraction >= 1.0:
    return rows
  labels = source.labels('train')
  keep = balanced_subset(labels if rows is None else labels[rows], label_fraction, source.num_classes,
                         label_seed)
  return keep if rows is None else rows[keep]


class Relabelled:
  """The records of a split with other labels (-1: none), for the streamed path; reading and
  describing are the wrapped records'."""

  def __init__(self, records, labels: np.ndarray):
    self.records, self.new_labels = records, np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.records)

  def describe(self, index: int) -> str:
    return self.records.describe(index)

  def __getitem__(self, index: int):
    return self.records[index][0], int(self.new_labels[int(index)])

  def get_many(self, indices) -> list:
    return [(data, int(self.new_labels[int(i)])) for (data, _), i in zip(self.records.get_many(indices), indices)]

  def labels(self, workers: int = 0) -> np.ndarray:
    return self.new_labels


def keep_labels(source: Source, labelled_rows) -> Source:
  """The source with the labels of its training split outside labelled_rows (None: all) set to
  -1: a label fraction that keeps the other images, unlabelled (distillation)."""
  if labelled_rows is None:
    return source
  labels = np.full(source.size('train'), -1, np.int32)
  labels[labelled_rows] = source.labels('train')[labelled_rows]
  records = dict(source.records)
  if not isinstance(records['train'], _ArrayRecords):
    records['train'] = Relabelled(records['train'], labels)
  return dataclasses.replace(source, records=records, reader=RelabelledReader(source.reader, labels))


class RelabelledReader:
  """A Reader whose training split has other labels (keep_labels)."""

  def __init__(self, reader: Reader, train_labels: np.ndarray):
    self.reader, self.train_labels = reader, train_labels

  def decode(self, role: str) -> dict:
    out = self.reader.decode(role)
    return {**out, 'labels': np.where(self.train_labels >= 0, out['labels'], -1)} if role == 'train' else out

  def labels(self, role: str) -> np.ndarray:
    return self.train_labels if role == 'train' else self.reader.labels(role)


class _ArrayRecords:
  """Stands for the records of an in-memory split (the device path only)."""

  def __init__(self, size: int):
    self.size = size

  def __len__(self) -> int:
    return self.size


def in_memory(name: str, train: Split, test: Split | None = None, num_classes: int = 0,
              class_names: tuple = ()) -> Source:
  """A Source over arrays already in memory (benchmarks, tests): the device path only."""
  splits = {'train': train, 'test': test}
  identity = {role: None if s is None else {'count': len(s.labels), 'hash': ''} for role, s in splits.items()}
  return Source(name, num_classes, class_names, int(train.images.shape[1]),
                {role: None if s is None else _ArrayRecords(len(s.labels)) for role, s in splits.items()},
                identity, {role: None for role in splits}, ArrayReader(splits))


class ArrayReader:
  """The Reader of splits already in memory ({role: Split})."""

  def __init__(self, splits: dict):
    self.splits = splits

  def decode(self, role: str) -> dict:
    return {'images': self.splits[role].images, 'labels': self.splits[role].labels}

  def labels(self, role: str) -> np.ndarray:
    return self.splits[role].labels
