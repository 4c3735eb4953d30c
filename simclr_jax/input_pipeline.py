"""Where the images live during training, behind one small interface the loop uses; two paths.

    inputs, eval_inputs = make_inputs(config, mesh)   # chooses the path (config.data_placement)
    step = inputs.bind(core_step)                     # jitted: (state, *args) -> (state, metrics)
    for args in inputs.epoch(epoch, start=0):         # one tuple per step of the epoch
      state, metrics = step(state, *args)
    for chunk, valid, labels in inputs.chunks('test', 1000):  # unaugmented uint8, sharded, in order
      ...

- device: both splits decoded once, held as uint8 on every device; each step gathers its batch by
  index inside the compiled step. The fastest path, for data that fits.
- stream: grain worker processes read and decode each process's share of every batch (its rows
  of the global batch only), prefetching; jax.make_array_from_process_local_data joins the
  shares into one global batch, which the same compiled step augments on the accelerator.

core_step(state, images_uint8 [B, H, W, 3], labels [B]) -> (state, metrics) is the training step
shared by both paths (augmentation, forward, loss, backward, update). The images of each step are
fixed by (seed, epoch) (records.epoch_indices), so both paths train on the same images in the
same order, and a resumed run continues at its step.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import data, parallel
from simclr_jax.errors import DataError, summary
from simclr_jax.metrics import log
from simclr_jax.records import ChunkPlan, Decode, TrainPlan, epoch_indices

# The datasets held on every device may take at most this share of one device's memory; the rest
# is for the model, its activations and the optimiser. data_placement=auto streams beyond it.
DEVICE_SHARE = 0.4


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch; at least one (a training set smaller than a batch repeats images)."""
  return max(1, num_examples // batch_size)


class _Epochs:
  """What both input paths share: the order of each epoch's training images, fixed by (seed,
  epoch). Subclasses have num_examples, batch_size and seed."""

  @property
  def steps_per_epoch(self) -> int:
    return steps_per_epoch(self.num_examples, self.batch_size)

  def step_indices(self, epoch: int) -> np.ndarray:
    """[steps_per_epoch, batch_size] training-split indices of each step of the epoch."""
    return epoch_indices(self.seed, epoch, self.num_examples,
                         self.steps_per_epoch * self.batch_size).reshape(self.steps_per_epoch, -1)


@dataclasses.dataclass
class DeviceInputs(_Epochs):
  """Both splits resident on every device as uint8; each step gathers its batch by index inside
  the compiled step, so no image crosses from the host during training."""
  mesh: jax.sharding.Mesh
  batch_size: int
  seed: int
  num_classes: int            # 0: unlabelled
  images: dict                # split -> uint8 [N, H, W, 3] jax.Array, replicated
  labels: dict                # split -> int32 [N] jax.Array (-1: no label)
  host_labels: dict           # split -> int32 [N] numpy array (-1: no label)
  kind = 'device'

  @property
  def num_examples(self) -> int:
    return int(self.images['train'].shape[0])

  @property
  def image_shape(self) -> tuple:
    return tuple(self.images['train'].shape[1:])

  @property
  def labelled_test(self) -> bool:
    labels = self.host_labels.get('test')
    return self.num_classes > 0 and labels is not None and bool(np.all(labels >= 0))

  def bind(self, core_step: Callable) -> Callable:
    """The jitted step (state, images, labels, epoch_idx) -> (state, metrics); the batch is
    rows [k * B, (k + 1) * B) of epoch_idx, k the step's place in its epoch."""
    batch, spe = self.batch_size, self.steps_per_epoch
    sharded = parallel.data_sharded(self.mesh)

    def step(state, images, labels, epoch_idx):
      start = (state.step % spe) * batch
      idx = jax.lax.with_sharding_constraint(jax.lax.dynamic_slice_in_dim(epoch_idx, start, batch), sharded)
      x = jax.lax.with_sharding_constraint(images[idx], sharded)
      return core_step(state, x, labels[idx])

    return jax.jit(step, donate_argnums=(0,))

  def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple]:
    """The bound step's arguments for steps start, start + 1, ... of `epoch`."""
    idx = parallel.put_replicated(self.step_indices(epoch).reshape(-1), self.mesh)
    for _ in range(start, self.steps_per_epoch):
      yield self.images['train'], self.labels['train'], idx

  def size(self, split: str) -> int:
    return int(self.images[split].shape[0])

  def chunks(self, split: str, batch: int) -> Iterator[tuple[jax.Array, int, np.ndarray]]:
    """(uint8 chunk [batch', H, W, 3] sharded over the devices, number of real rows, their
    labels): the split in order, the last chunk padded with zeros. batch' is batch rounded to
    the device count."""
    images, labels = self.images[split], self.host_labels[split]
    batch = _chunk_size(batch, self.mesh)
    for start in range(0, images.shape[0], batch):
      size = min(batch, images.shape[0] - start)
      chunk = jax.lax.slice_in_dim(images, start, start + size)
      if size < batch:
        chunk = jnp.concatenate([chunk, jnp.zeros((batch - size,) + chunk.shape[1:], chunk.dtype)])
      yield jax.device_put(chunk, parallel.data_sharded(self.mesh)), size, labels[start:start + size]

  def close(self) -> None:
    pass


def _chunk_size(batch: int, mesh) -> int:
  n_dev = mesh.devices.size
  return max(n_dev, batch // n_dev * n_dev)


def process_rows(mesh, batch: int) -> tuple[int, int]:
  """[lo, hi): the rows of a global batch that live on this process's devices (contiguous)."""
  spans = parallel.data_sharded(mesh).addressable_devices_indices_map((batch,)).values()
  lo = min(s[0].start or 0 for s in spans)
  hi = max(batch if s[0].stop is None else s[0].stop for s in spans)
  if hi - lo != batch * len(mesh.local_devices) // mesh.devices.size:
    raise ValueError(f'the devices of process {jax.process_index()} do not hold one contiguous block '
                     'of the batch; order the mesh by process')
  return lo, hi


class StreamInputs(_Epochs):
  """Training images read and decoded by grain worker processes, each process reading only its
  rows of every global batch; the evaluation splits are streamed in chunks the same way."""
  kind = 'stream'

  def __init__(self, description: data.Description, mesh, batch_size: int, seed: int,
               total_steps_for: Callable[[int], int], workers: int = 0, rows=None,
               max_bad_fraction: float = 0.01):
    self.description, self.mesh, self.batch_size, self.seed = description, mesh, batch_size, seed
    self.num_classes = description.num_classes
    self.rows = rows                       # training-record indices in use (None: all)
    self.workers = workers or default_workers()
    self.max_bad_fraction = max_bad_fraction
    self._total_steps_for = total_steps_for
    self._iterator, self._next_step = None, None
    self.bad, self.seen = [], 0
    self._sharding = parallel.data_sharded(mesh)

  @property
  def num_examples(self) -> int:
    return len(self.description.train) if self.rows is None else len(self.rows)

  @property
  def image_shape(self) -> tuple:
    size = self.description.image_size
    return (size, size, 3)

  @property
  def labelled_test(self) -> bool:
    return self.num_classes > 0 and self.description.test is not None

  def bind(self, core_step: Callable) -> Callable:
    """The jitted step (state, images, labels) -> (state, metrics) over a global batch."""
    return jax.jit(core_step, donate_argnums=(0,))

  def _dataset(self, plan, workers: int):
    try:
      import grain
    except ImportError:
      raise DataError('data_placement=stream needs grain: pip install grain (or pass '
                      '--config.data_placement=device)') from None
    from absl import flags
    if not flags.FLAGS.is_parsed():  # library use: grain reads its absl flags' defaults
      flags.FLAGS.mark_as_parsed()
    # Grain's workers hand batches over in shared memory that this process releases; the
    # multiprocessing resource tracker would warn at exit about blocks it did not see released.
    quiet = 'ignore::UserWarning:multiprocessing.resource_tracker'
    if quiet not in os.environ.get('PYTHONWARNINGS', ''):
      os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [os.environ.get('PYTHONWARNINGS'), quiet]))
    ds = grain.MapDataset.source(plan).map(Decode(self.description.image_size, self.image_shape))
    threads = 2 if workers else 16  # training: a few threads in each worker; evaluation: threads only
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads))
    if workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return ds

  def train_plan(self, first_step: int) -> TrainPlan:
    lo, hi = process_rows(self.mesh, self.batch_size)
    return TrainPlan(self.description.train, self.rows, self.seed, self.num_examples,
                     self.steps_per_epoch, self.batch_size, lo, hi, first_step,
                     self._total_steps_for(self.steps_per_epoch))

  def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple]:
    """Global (images, labels) for steps start, start + 1, ... of `epoch`."""
    first = epoch * self.steps_per_epoch + start
    if self._iterator is None or self._next_step != first:
      self.close()
      plan = self.train_plan(first)
      self._iterator = iter(self._dataset(plan, self.workers))
      self._next_step = first
    bad_before = len(self.bad)
    for _ in range(start, self.steps_per_epoch):
      batch = self._next(self._iterator)
      self._count_bad(batch)
      self._next_step += 1
      yield (jax.make_array_from_process_local_data(self._sharding, batch['image']),
             jax.make_array_from_process_local_data(self._sharding, batch['label']))
    self._report_bad(len(self.bad) - bad_before)

  def _next(self, iterator):
    try:
      return next(iterator)
    except StopIteration:
      raise
    except Exception as e:  # a worker died or a record cannot be read
      self.close()
      raise DataError(f'the input pipeline stopped ({summary(e, last=True)}): '
                      'the run stops here and the last checkpoint is kept; rerun the same command to '
                      'resume') from None

  def _count_bad(self, batch) -> None:
    failed = np.flatnonzero(~batch['ok'])
    self.seen += len(batch['ok'])
    self.bad += [self.description.train.describe(batch['index'][i]) for i in failed]

  def _report_bad(self, new: int) -> None:
    if not new:
      return
    first = ', '.join(self.bad[-new:][:3])
    if len(self.bad) > self.max_bad_fraction * max(self.seen, 1):
      self.close()
      raise DataError(f'{len(self.bad)} of the {self.seen} training images read so far cannot be '
                      f'decoded, more than max_bad_fraction={self.max_bad_fraction:g} ({first}): '
                      'remove or replace them, or raise --config.max_bad_fraction')
    log(f'notice: {new} training images of this epoch cannot be decoded and were replaced by black '
        f'images ({first})')

  def size(self, split: str) -> int:
    records = self.description.train if split == 'train' else self.description.test
    return len(records) if split != 'train' or self.rows is None else len(self.rows)

  def chunks(self, split: str, batch: int) -> Iterator[tuple[jax.Array, int, np.ndarray]]:
    """As DeviceInputs.chunks, each process reading its rows of every chunk (in threads)."""
    batch = _chunk_size(batch, self.mesh)
    lo, hi = process_rows(self.mesh, batch)
    records = self.description.train if split == 'train' else self.description.test
    plan = ChunkPlan(records, self.rows if split == 'train' else None, batch, lo, hi)
    total = plan.size
    for c, local in enumerate(self._dataset(plan, workers=0)):
      images = jax.make_array_from_process_local_data(self._sharding, local['image'])
      labels = jax.make_array_from_process_local_data(self._sharding, local['label'])
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        labels = multihost_utils.process_allgather(labels, tiled=True)
      valid = min(batch, total - c * batch)
      yield images, valid, np.asarray(labels)[:valid]

  def close(self) -> None:
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


def default_workers() -> int:
  """Input worker processes when config.input_workers is 0: the CPU cores less one, at most 16."""
  return max(1, min(16, (os.cpu_count() or 2) - 1))


def device_memory_bytes() -> int:
  """One device's memory: the allocator's limit on GPUs and TPUs, the host's RAM on the CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def choose_placement(requested: str, need: int, memory: int | None = None, names: str = 'the data') -> str:
  """'device' or 'stream' for config.data_placement, decided before anything is decoded: 'auto'
  is device when `need` bytes of uint8 splits fit in DEVICE_SHARE of one device's memory (each
  device holds a copy), logged with the sizes that decided it; 'device' for data that does not
  fit is a DataError naming `names`."""
  if requested == 'stream':
    return requested
  memory = device_memory_bytes() if memory is None else memory
  fits = need <= DEVICE_SHARE * memory
  if requested == 'device':
    if not fits:
      raise DataError(f'{names} takes {need / 2**30:.2f} GiB as uint8 arrays on every device, more than '
                      f'{DEVICE_SHARE:.0%} of its {memory / 2**30:.1f} GiB ({DEVICE_SHARE * memory / 2**30:.2f} '
                      'GiB fit): lower --config.image_size or --config.train_limit, or pass '
                      '--config.data_placement=stream')
    return requested
  placement = 'device' if fits else 'stream'
  log(f'data placement {placement} (config.data_placement=auto): the uint8 splits take '
      f'{need / 2**30:.2f} GiB, {DEVICE_SHARE:.0%} of one device\'s {memory / 2**30:.1f} GiB is '
      f'{DEVICE_SHARE * memory / 2**30:.2f} GiB')
  return placement


def make_inputs(config, mesh, label_fraction: float = 1.0, require_labels: bool = False):
  """(training inputs, evaluation inputs) for a stage: the config's dataset (a class-balanced
  label_fraction of its training split) on the path config.data_placement chooses, and
  config.eval_dataset when given (else the same inputs)."""
  description = data.describe_from_config(config)
  eval_description = None
  if config.eval_dataset:
    eval_description = data.describe_from_config(config, 'eval', image_size=description.image_size)
  need = description.nbytes_with(config.train_limit) + (eval_description.nbytes if eval_description else 0)
  names = ', '.join(d.name for d in (description, eval_description) if d is not None)
  placement = choose_placement(config.data_placement, need, names=names)
  if placement == 'device':
    dataset = data.load_from_config(config)
    if require_labels:
      _check_labelled(dataset.train.labels, dataset.test, config)
    if label_fraction < 1.0:
      keep = data.balanced_subset(dataset.train.labels, label_fraction, dataset.num_classes,
                                  config.label_seed)
      dataset = dataclasses.replace(dataset, train=dataset.train.subset(keep))
    eval_dataset = None
    if config.eval_dataset:
      eval_dataset = data.load_from_config(config, 'eval', image_size=dataset.image_size)
      _check_labelled(eval_dataset.train.labels, eval_dataset.test, config, field='eval_dataset')
    inputs = device_inputs(dataset, mesh, config.batch_size, config.seed)
    if eval_dataset is None:
      return inputs, inputs
    return inputs, device_inputs(eval_dataset, mesh, config.batch_size, config.seed, notices=False)
  rows = None
  if config.train_limit:
    rows = np.arange(data.limited_count(config.train_limit, len(description.train), description.name))
  if require_labels or label_fraction < 1.0:
    labels = data.record_labels(description.train)
    labels = labels if rows is None else labels[rows]
    if require_labels:
      _check_labelled(labels, description.test, config)
    if label_fraction < 1.0:
      keep = data.balanced_subset(labels, label_fraction, description.num_classes, config.label_seed)
      rows = keep if rows is None else rows[keep]
  stream = lambda d, r: StreamInputs(d, mesh, config.batch_size, config.seed,
                                     lambda spe: spe * config.epochs, config.input_workers, r,
                                     config.max_bad_fraction)
  inputs = stream(description, rows)
  notice_small_training_set(inputs.num_examples, config.batch_size)
  return inputs, (inputs if eval_description is None else stream(eval_description, None))


def _check_labelled(train_labels: np.ndarray, test, config, field: str = 'dataset') -> None:
  problems = []
  if not len(train_labels) or not np.all(train_labels >= 0):
    unlabelled = int(np.sum(train_labels < 0))
    problems.append(f'{unlabelled} of its {len(train_labels)} training images have no label')
  labelled_test = test is not None and (not hasattr(test, 'labelled') or test.labelled)
  if not labelled_test:
    problems.append('it has no labelled test split')
  if problems:
    what = ('a classifier stage needs labels' if field == 'dataset'
            else 'the monitors need labelled train and test splits')
    raise DataError(f'config.{field}={config[field]!r}: {what}, but {" and ".join(problems)}: use a '
                    'labelled dataset, folder (class sub-folders) or split (for STL-10: train)')


def notice_small_training_set(num_examples: int, batch_size: int) -> None:
  if num_examples < batch_size:
    log(f'notice: the training set has {num_examples} images, fewer than batch_size={batch_size}: '
        'every batch repeats images; lower --config.batch_size')


def device_inputs(dataset, mesh, batch_size: int, seed: int, notices: bool = True) -> DeviceInputs:
  """Places a data.Dataset's splits, replicated, on the mesh's devices."""
  if notices:
    notice_small_training_set(len(dataset.train.images), batch_size)
  splits = {'train': dataset.train, 'test': dataset.test}
  splits = {k: v for k, v in splits.items() if v is not None}
  images, labels, host_labels = {}, {}, {}
  for name, split in splits.items():
    images[name], labels[name] = parallel.put_replicated((split.images, split.labels), mesh)
    host_labels[name] = split.labels
  return DeviceInputs(mesh, batch_size, seed, dataset.num_classes, images, labels, host_labels)
