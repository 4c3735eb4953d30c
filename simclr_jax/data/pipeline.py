"""Where the images live during training, behind one small interface the loop uses; two paths.

    inputs, eval_inputs = make_inputs(source, rows, 'auto', mesh, batch_size=512, seed=0)
    step = inputs.bind(core_step)                          # jitted: (state, *args) -> (state, metrics)
    for k, args in inputs.batches(first_step, total_steps):  # the arguments of step k
      state, metrics = step(state, *args)
    for chunk, valid, labels in inputs.chunks('test', 1000):  # unaugmented uint8, sharded, in order
      ...

- device: both splits decoded once (sources.Source.decode), held as uint8 on every device; each
  step's batch is gathered there by index (a small compiled gather, so the training step is the
  same program for any dataset size). The fastest path, for data that fits.
- stream: grain worker processes read and decode each process's share of every batch (its rows
  of the global batch only), prefetching; jax.make_array_from_process_local_data joins the
  shares into one global batch, which the same compiled step augments on the accelerator.

core_step(state, images_uint8 [B, H, W, 3], labels [B]) -> (state, metrics) is the training step
shared by both paths. The images of each step are fixed by (seed, epoch) (records.epoch_indices),
so both paths train on the same images in the same order, and a resumed run continues at its
step. An unreadable image is black and unlabelled on both.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.data import sources
from simclr_jax.core import interrupts, parallel
from simclr_jax.core.errors import DataError, summary
from simclr_jax.core.log import log, plural
from simclr_jax.data.records import ChunkPlan, Decode, TrainPlan, epoch_indices

# The datasets held on every device may take at most this share of one device's memory; the rest
# is for the model, its activations and the optimiser. data_placement=auto streams beyond it.
DEVICE_SHARE = 0.4


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch; at least one (a training set smaller than a batch repeats images)."""
  return max(1, num_examples // batch_size)


class _Inputs:
  """What both paths share: the training split's records in use (`rows`, None for all), the order
  of each epoch's images fixed by (seed, epoch), and the evaluation splits' metadata."""

  def __init__(self, source: sources.Source, rows, mesh, batch_size: int, seed: int):
    self.source, self.rows, self.mesh, self.batch_size, self.seed = source, rows, mesh, batch_size, seed
    self.num_examples = source.size('train') if rows is None else len(rows)
    if not self.num_examples:
      raise DataError(f'the training split of {source.name} holds no images: use a split or folder '
                      'with images')
    self.steps_per_epoch = steps_per_epoch(self.num_examples, batch_size)
    self.num_classes = source.num_classes
    self.image_shape = (source.image_size, source.image_size, 3)
    self._sharding = parallel.data_sharded(mesh)

  @property
  def labelled_test(self) -> bool:
    return self.num_classes > 0 and self.source.has('test')

  @property
  def has_labels(self) -> bool:
    """Whether any training image in use has a label (STL-10's unlabelled split has none)."""
    return self.num_classes > 0 and bool(np.any(self.train_labels() >= 0))

  def train_labels(self) -> np.ndarray:
    labels = self.source.labels('train')
    return labels if self.rows is None else labels[self.rows]

  def step_indices(self, epoch: int) -> np.ndarray:
    """[steps_per_epoch, batch_size] positions in the training rows of each step of the epoch."""
    return epoch_indices(self.seed, epoch, self.num_examples,
                         self.steps_per_epoch * self.batch_size).reshape(self.steps_per_epoch, -1)

  def bind(self, core_step: Callable) -> Callable:
    """The jitted step (state, images, labels) -> (state, metrics) over a global batch, the
    arguments of batches(): one program for both paths, whatever the training set's size. The
    state and metrics it returns are replicated, as the state starts, whatever a method's
    state update computes from the sharded batch (a queue the batch is pushed into)."""
    return jax.jit(core_step, donate_argnums=(0,), out_shardings=parallel.replicated(self.mesh))

  def chunk_size(self, batch: int) -> int:
    n_dev = self.mesh.devices.size
    return max(n_dev, batch // n_dev * n_dev)

  def close(self) -> None:
    pass


class DeviceInputs(_Inputs):
  """Both splits resident on every device as uint8; each step's batch is gathered on the devices
  by index, so no image crosses from the host during training."""
  kind = 'device'

  def __init__(self, source, rows, mesh, batch_size: int, seed: int, max_bad_fraction: float = 0.01):
    super().__init__(source, rows, mesh, batch_size, seed)
    splits = {'train': source.decode('train', max_bad_fraction)}
    if rows is not None:
      splits['train'] = splits['train'].subset(rows)
    if source.has('test'):
      splits['test'] = source.decode('test', max_bad_fraction)
    self.host_labels = {k: v.labels for k, v in splits.items()}
    self.train_labels = lambda: self.host_labels['train']
    self.images, self.labels = {}, {}
    for name, split in splits.items():
      self.images[name], self.labels[name] = parallel.put_replicated((split.images, split.labels), mesh)
    self._gather = jax.jit(functools.partial(_gather_rows, sharding=self._sharding),
                           out_shardings=(self._sharding, self._sharding))

  def batches(self, first_step: int, total_steps: int) -> Iterator[tuple[int, tuple]]:
    """(k, global (images, labels) gathered on the devices) for steps k = first_step, ...,
    total_steps - 1: row k mod steps_per_epoch of the epoch's step_indices."""
    spe = self.steps_per_epoch
    for epoch in range(first_step // spe, -(-total_steps // spe)):
      idx = parallel.put_replicated(self.step_indices(epoch), self.mesh)
      for k in range(max(first_step, epoch * spe), min(total_steps, (epoch + 1) * spe)):
        yield k, self._gather(self.images['train'], self.labels['train'], idx, k % spe)

  def chunks(self, split: str, batch: int) -> Iterator[tuple[jax.Array, int, np.ndarray]]:
    """(uint8 chunk [batch', H, W, 3] sharded over the devices, number of real rows, their
    labels): the split in order, the last chunk padded with zeros. batch' is batch rounded to
    the device count."""
    images, labels = self.images[split], self.host_labels[split]
    batch = self.chunk_size(batch)
    for start in range(0, images.shape[0], batch):
      size = min(batch, images.shape[0] - start)
      chunk = jax.lax.slice_in_dim(images, start, start + size)
      if size < batch:
        chunk = jnp.concatenate([chunk, jnp.zeros((batch - size,) + chunk.shape[1:], chunk.dtype)])
      yield jax.device_put(chunk, self._sharding), size, labels[start:start + size]


def _gather_rows(images, labels, step_indices, row, sharding):
  """The batch of row `row` of step_indices [steps, B]: (images, labels) placed by `sharding`."""
  idx = jax.lax.with_sharding_constraint(step_indices[row], sharding)
  return (jax.lax.with_sharding_constraint(images[idx], sharding),
          jax.lax.with_sharding_constraint(labels[idx], sharding))


def process_rows(mesh, batch: int) -> tuple[int, int]:
  """[lo, hi): the rows of a global batch that live on this process's devices (contiguous)."""
  spans = parallel.data_sharded(mesh).addressable_devices_indices_map((batch,)).values()
  lo = min(s[0].start or 0 for s in spans)
  hi = max(batch if s[0].stop is None else s[0].stop for s in spans)
  if hi - lo != batch * len(mesh.local_devices) // mesh.devices.size:
    raise ValueError(f'the devices of process {jax.process_index()} do not hold one contiguous block '
                     'of the batch; order the mesh by process')
  return lo, hi


_WORKER_CHECK_SECONDS = 1.0  # how often a wait for a batch looks at the workers
_GRACE_SECONDS = 3.0  # then how long it lets grain report a dead worker itself


def _stopped(reason: str) -> DataError:
  return DataError(f'the input pipeline stopped ({reason}): the run stops here and the last checkpoint is kept; '
                   'rerun the same command to resume')


class StreamInputs(_Inputs):
  """Training images read and decoded by grain worker processes, each process reading only its
  rows of every global batch; the evaluation splits are streamed in chunks the same way."""
  kind = 'stream'

  def __init__(self, source, rows, mesh, batch_size: int, seed: int, workers: int = 0,
               max_bad_fraction: float = 0.01):
    super().__init__(source, rows, mesh, batch_size, seed)
    self.workers = workers or default_workers()
    self.max_bad_fraction = max_bad_fraction
    self._iterator, self._next_step = None, None
    self._worker_processes = set()  # the grain workers seen alive, checked while waiting
    self.bad, self.seen = {}, 0  # record index -> its description; images read so far

  def _dataset(self, plan, workers: int):
    try:
      import grain
    except ImportError:
      raise DataError('data_placement=stream needs grain: pip install -e \'.[stream]\' (or pass '
                      '--config.data_placement=device)') from None
    from absl import flags
    if not flags.FLAGS.is_parsed():  # library use: grain reads its absl flags' defaults
      flags.FLAGS.mark_as_parsed()
    # Grain's workers hand batches over in shared memory that this process releases; the
    # multiprocessing resource tracker would warn at exit about blocks it did not see released.
    quiet = 'ignore::UserWarning:multiprocessing.resource_tracker'
    if quiet not in os.environ.get('PYTHONWARNINGS', ''):
      os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [os.environ.get('PYTHONWARNINGS'), quiet]))
    ds = grain.MapDataset.source(plan).map(Decode(self.image_shape))
    threads = 2 if workers else 16  # training: a few threads in each worker; evaluation: threads only
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads))
    if workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return ds

  def train_plan(self, first_step: int, total_steps: int) -> TrainPlan:
    lo, hi = process_rows(self.mesh, self.batch_size)
    return TrainPlan(self.source.records['train'], self.rows, self.seed, self.num_examples,
                     self.steps_per_epoch, self.batch_size, lo, hi, first_step, total_steps)

  def batches(self, first_step: int, total_steps: int) -> Iterator[tuple[int, tuple]]:
    """(k, global (images, labels)) for steps k = first_step, ..., total_steps - 1."""
    if self._iterator is None or self._next_step != first_step:
      self.close()
      self._iterator = iter(self._dataset(self.train_plan(first_step, total_steps), self.workers))
      self._next_step = first_step
    new = 0
    for k in range(first_step, total_steps):
      batch = self._next(self._iterator)
      new += self._count_bad(batch)
      self._next_step = k + 1
      if new and (k + 1) % self.steps_per_epoch == 0:
        self._report_bad(new)
        new = 0
      yield k, (jax.make_array_from_process_local_data(self._sharding, batch['image']),
                jax.make_array_from_process_local_data(self._sharding, batch['label']))
    if new:
      self._report_bad(new)

  def _next(self, iterator):
    """The next batch, read in a thread while this one watches the workers: a worker killed while
    writing a batch can leave grain waiting forever on the half-written message, so a worker that
    exits (killed, out of memory) stops the run as a failed read does."""
    out = {}

    def read():
      try:
        out['batch'] = next(iterator)
      except BaseException as e:  # a worker died or a record cannot be read
        out['error'] = e
    reader = threading.Thread(target=read, daemon=True, name='simclr_jax-next-batch')
    reader.start()
    self._dead_worker()  # notes the workers while they live: a dead one leaves active_children()
    reader.join(_WORKER_CHECK_SECONDS)
    while reader.is_alive():
      dead = self._dead_worker()
      if dead is not None:
        reader.join(_GRACE_SECONDS)  # grain itself notices a worker that died between batches
        if reader.is_alive():
          self._abandon()
          raise _stopped(f'a reading worker exited with code {dead}')
        break
      reader.join(_WORKER_CHECK_SECONDS)
    if 'error' in out:
      self.close()
      raise _stopped(summary(out['error'], last=True))
    return out['batch']

  def _abandon(self) -> None:
    """Drops an iterator stuck on a dead worker without closing it (closing would wait on the stuck
    reader too) and stops the workers still running, which would otherwise retry a full queue
    for ever and keep the process's output open."""
    for p in self._worker_processes:
      if p.exitcode is None:
        p.kill()
    self._iterator, self._worker_processes = None, set()

  def _dead_worker(self) -> int | None:
    """The exit code of a grain worker of this process that failed (grain's test: exited, not with
    0), else None."""
    self._worker_processes |= {p for p in multiprocessing.active_children() if p.name.startswith('grain')}
    codes = [p.exitcode for p in self._worker_processes if p.exitcode not in (None, 0)]
    return codes[0] if codes else None

  def _count_bad(self, batch) -> int:
    """Counts the images read; returns how many unreadable ones were not seen before."""
    self.seen += len(batch['ok'])
    new = 0
    for i in np.flatnonzero(~batch['ok']):
      index = int(batch['index'][i])
      if index not in self.bad:
        self.bad[index] = (self.source.records['train'].describe(index), _reason(self.source.records['train'], index))
        new += 1
    return new

  def _report_bad(self, new: int) -> None:
    """The device path's notice (or error) for the unreadable images found so far, once each."""
    bad = list(self.bad.values())
    try:
      sources.check_bad(f'{self.source.name} (train)', bad, self.num_examples, self.max_bad_fraction)
    except DataError:
      self.close()
      raise

  def chunks(self, split: str, batch: int) -> Iterator[tuple[jax.Array, int, np.ndarray]]:
    """As DeviceInputs.chunks, each process reading its rows of every chunk (in threads)."""
    batch = self.chunk_size(batch)
    lo, hi = process_rows(self.mesh, batch)
    plan = ChunkPlan(self.source.records[split], self.rows if split == 'train' else None, batch, lo, hi)
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
    self._iterator, self._worker_processes = None, set()


def _reason(records, index: int) -> str:
  """Why a record's image cannot be decoded (read again here, as the device path reports it)."""
  from simclr_jax.data import images
  try:
    images.decode(records[index][0])
  except Exception as e:
    return summary(e, 120)
  return 'cannot be decoded'


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


def make_inputs(source: sources.Source, rows, placement: str, mesh, batch_size: int, seed: int, *,
                eval_source: sources.Source | None = None, workers: int = 0,
                max_bad_fraction: float = 0.01, small_set_notice: bool = True):
  """(training inputs, evaluation inputs) on the path `placement` (config.data_placement)
  chooses: the source's training records `rows` (None: all) and its test split, and eval_source
  (its own splits, all of them) for the monitors when given (else the same inputs)."""
  count = source.size('train') if rows is None else len(rows)
  need = source.nbytes(count) + (eval_source.nbytes() if eval_source else 0)
  names = ', '.join(s.name for s in (source, eval_source) if s is not None)
  placement = choose_placement(placement, need, names=names)
  with interrupts.phase('loading the data'):
    if placement == 'device':
      make = lambda s, r: DeviceInputs(s, r, mesh, batch_size, seed, max_bad_fraction)
    else:
      make = lambda s, r: StreamInputs(s, r, mesh, batch_size, seed, workers, max_bad_fraction)
    inputs = make(source, rows)
    if small_set_notice and inputs.num_examples < batch_size:
      log(f'notice: the training set has {plural(inputs.num_examples, "image")}, fewer than '
          f'batch_size={batch_size}: every batch repeats images; lower --config.batch_size')
    return inputs, (inputs if eval_source is None else make(eval_source, None))
