"""What the input worker processes run: random access to the records of a split, the order of
every epoch, and decoding to uint8 arrays. NumPy, Pillow and (for TFDS) tensorflow_datasets only,
no JAX, so that a spawned worker starts quickly. Every object here pickles small.

    records = TfdsRecords('cifar10', '', 'train', 50000)     # or FolderRecords(root, entries)
    plan = TrainPlan(records, rows, seed, num_examples, steps_per_epoch, batch, lo, hi, first, total)
    Decode(image_shape)(plan[j])                            # this process's rows of step first + j
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

from simclr_jax.data import images


def epoch_indices(seed: int, epoch: int, num_examples: int, length: int) -> np.ndarray:
  """The training images of one epoch, in order: shuffled copies of range(num_examples), enough
  for `length` draws, fixed by (seed, epoch) alone. Both input paths use it."""
  rng = np.random.default_rng([seed, epoch])
  copies = -(-length // num_examples)
  return np.concatenate([rng.permutation(num_examples) for _ in range(copies)])[:length].astype(np.int32)


# The first open of a TFDS split in a process, one thread at a time: tensorflow_datasets' lazy
# imports (etils' LazyModule, a functools.cached_property whose lock Python 3.11 shares between
# instances) deadlock when two threads of a grain worker import it at once (seen: one thread holds
# the module lock and waits for the property's lock, the other the reverse, and the run hangs).
_OPEN_LOCK = threading.Lock()


class TfdsRecords:
  """(encoded image bytes, label) of the records of a TFDS split (array_record), opened lazily in
  each process that reads (once, whichever of its threads reads first)."""

  def __init__(self, name: str, data_dir: str, split: str, size: int):
    self.name, self.data_dir, self.split, self.size = name, data_dir, split, size
    self._source = None

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def __len__(self) -> int:
    return self.size

  def describe(self, index: int) -> str:
    return f'record {index} of {self.name}/{self.split}'

  def _open(self):
    if self._source is None:
      with _OPEN_LOCK:
        if self._source is None:
          os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
          import tensorflow_datasets as tfds
          builder = tfds.builder(self.name, data_dir=self.data_dir or None, file_format='array_record')
          self._source = builder.as_data_source(split=self.split,
                                                decoders={'image': tfds.decode.SkipDecoding()})
    return self._source

  def __getitem__(self, index: int):
    record = self._open()[int(index)]
    return record['image'], int(record['label'])

  def get_many(self, indices) -> list:
    """[(image bytes, label)] of several records in one read (several times faster than one by one)."""
    return [(r['image'], int(r['label'])) for r in self._open().__getitems__([int(i) for i in indices])]

  def labels(self, workers: int = 16) -> np.ndarray:
    """Every record's label (reads each record once)."""
    from concurrent.futures import ThreadPoolExecutor
    chunks = [range(s, min(s + 4096, self.size)) for s in range(0, self.size, 4096)]
    with ThreadPoolExecutor(workers) as pool:
      parts = pool.map(lambda r: [label for _, label in self.get_many(r)], chunks)
      return np.asarray([y for part in parts for y in part], np.int32)


class FolderRecords:
  """(file path, label) of the images of a folder split."""

  def __init__(self, root: str, entries: list):
    self.root = root
    self.paths = [rel for rel, _ in entries]
    self.labels_ = np.asarray([label for _, label in entries], np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, index: int) -> str:
    return self.paths[int(index)]

  def __getitem__(self, index: int):
    return os.path.join(self.root, self.paths[int(index)]), int(self.labels_[int(index)])

  def get_many(self, indices) -> list:
    return [self[i] for i in indices]

  def labels(self, workers: int = 0) -> np.ndarray:
    return self.labels_


def _read(records, indices) -> list:
  """[(source, label, record index)] of the records at `indices`, read together."""
  return [(source, label, int(i)) for (source, label), i in zip(records.get_many(indices), indices)]


class TrainPlan:
  """Element j of the training stream of one process: its rows [lo, hi) of the global batch of
  step first_step + j, the batch being the next `batch` entries of epoch_indices, as a list of
  (source, label, record index). `rows` maps the epoch's positions to record indices (a label
  subset, a train_limit); None means every record."""

  def __init__(self, records, rows, seed: int, num_examples: int, steps_per_epoch: int,
               batch: int, lo: int, hi: int, first_step: int, total_steps: int):
    self.records, self.rows, self.seed = records, rows, seed
    self.num_examples, self.steps_per_epoch, self.batch = num_examples, steps_per_epoch, batch
    self.lo, self.hi, self.first_step, self.total_steps = lo, hi, first_step, total_steps

  def __len__(self) -> int:
    return self.total_steps - self.first_step

  @functools.lru_cache(maxsize=2)
  def _epoch(self, epoch: int) -> np.ndarray:
    return epoch_indices(self.seed, epoch, self.num_examples, self.steps_per_epoch * self.batch)

  def record_indices(self, j: int) -> np.ndarray:
    """The record indices of this process's rows of element j's batch."""
    epoch, k = divmod(self.first_step + int(j), self.steps_per_epoch)
    positions = self._epoch(epoch)[k * self.batch + self.lo:k * self.batch + self.hi]
    return positions if self.rows is None else np.asarray(self.rows)[positions]

  def __getitem__(self, j: int):
    return _read(self.records, self.record_indices(j))


class ChunkPlan:
  """Element c of one process's share of a split read in order in chunks of `chunk` rows: rows
  lo..hi of chunk c, as (source, label, record index); rows past the end are padding (None, -1, -1)."""

  def __init__(self, records, rows, chunk: int, lo: int, hi: int):
    self.records, self.rows, self.chunk, self.lo, self.hi = records, rows, chunk, lo, hi
    self.size = len(records) if rows is None else len(rows)
    self.num_chunks = -(-self.size // chunk)

  def __len__(self) -> int:
    return self.num_chunks

  def __getitem__(self, c: int):
    positions = [p for p in range(c * self.chunk + self.lo, c * self.chunk + self.hi) if p < self.size]
    indices = positions if self.rows is None else [int(self.rows[p]) for p in positions]
    found = _read(self.records, indices)
    return found + [(None, -1, -1)] * (self.hi - self.lo - len(found))


class Decode:
  """[(source, label, index)] -> {'image': uint8 [n, S, S, 3], 'label', 'index', 'ok'}: an image
  that cannot be read becomes zeros without a label (-1) and ok False (counted and named by the
  main process), as the device path keeps it (datasets.Source.decode)."""

  def __init__(self, shape: tuple):
    self.shape = tuple(shape)  # (S, S, 3): images are decoded at size S

  def one(self, source):
    if source is None:
      return np.zeros(self.shape, np.uint8), True
    try:
      image, _ = images.decode(source, self.shape[0])
      if image.shape == self.shape:
        return image, True
    except Exception:  # reported by the main process, which knows how many it tolerates
      pass
    return np.zeros(self.shape, np.uint8), False

  def __call__(self, elements):
    decoded = [self.one(source) for source, _, _ in elements]
    return {'image': np.stack([image for image, _ in decoded]),
            'label': np.asarray([label if ok else -1 for (_, label, _), (_, ok) in zip(elements, decoded)],
                                np.int32),
            'index': np.asarray([index for _, _, index in elements], np.int64),
            'ok': np.asarray([ok for _, ok in decoded], bool)}
