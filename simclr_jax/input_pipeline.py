"""Where the images live during training, behind one small interface the loop uses.

    inputs, eval_inputs = make_inputs(config, mesh)           # load, check, place
    inputs = device_inputs(dataset, mesh, batch_size, seed)   # both splits held on every device
    step = inputs.bind(core_step)                             # jitted: (state, *args) -> (state, metrics)
    for args in inputs.epoch(epoch, start=0):                 # one tuple per step of the epoch
      state, metrics = step(state, *args)
    for chunk, valid in inputs.chunks('test', 1000):          # unaugmented uint8 chunks, sharded
      ...

core_step(state, images_uint8 [B, H, W, 3], labels [B]) -> (state, metrics) is the training step
shared by every input path (augmentation, forward, loss, backward, update). The images of each
step are fixed by (seed, epoch): epoch_indices.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import data, parallel
from simclr_jax.errors import DataError
from simclr_jax.metrics import log


def epoch_indices(seed: int, epoch: int, num_examples: int, length: int) -> np.ndarray:
  """The training images of one epoch, in order: shuffled copies of range(num_examples), enough
  for `length` draws, fixed by (seed, epoch) alone."""
  rng = np.random.default_rng([seed, epoch])
  copies = -(-length // num_examples)
  return np.concatenate([rng.permutation(num_examples) for _ in range(copies)])[:length].astype(np.int32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch; at least one (a training set smaller than a batch repeats images)."""
  return max(1, num_examples // batch_size)


@dataclasses.dataclass
class DeviceInputs:
  """Both splits resident on every device as uint8; each step gathers its batch by index inside
  the compiled step, so no image crosses from the host during training."""
  mesh: jax.sharding.Mesh
  batch_size: int
  seed: int
  num_classes: int            # 0: unlabelled
  images: dict                # split -> uint8 [N, H, W, 3] jax.Array, replicated
  labels: dict                # split -> int32 [N] jax.Array (-1: no label)
  host_labels: dict           # split -> int32 [N] numpy array (-1: no label)

  @property
  def num_examples(self) -> int:
    return int(self.images['train'].shape[0])

  @property
  def image_shape(self) -> tuple:
    return tuple(self.images['train'].shape[1:])

  @property
  def steps_per_epoch(self) -> int:
    return steps_per_epoch(self.num_examples, self.batch_size)

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
    idx = epoch_indices(self.seed, epoch, self.num_examples, self.steps_per_epoch * self.batch_size)
    idx = parallel.put_replicated(idx, self.mesh)
    for _ in range(start, self.steps_per_epoch):
      yield self.images['train'], self.labels['train'], idx

  def size(self, split: str) -> int:
    return int(self.images[split].shape[0])

  def chunks(self, split: str, batch: int) -> Iterator[tuple[jax.Array, int]]:
    """(uint8 chunk [batch', H, W, 3] sharded over the devices, number of real rows): the split
    in order, the last chunk padded with zeros. batch' is batch rounded to the device count."""
    images = self.images[split]
    n_dev = self.mesh.devices.size
    batch = max(n_dev, batch // n_dev * n_dev)
    for start in range(0, images.shape[0], batch):
      size = min(batch, images.shape[0] - start)
      chunk = jax.lax.slice_in_dim(images, start, start + size)
      if size < batch:
        chunk = jnp.concatenate([chunk, jnp.zeros((batch - size,) + chunk.shape[1:], chunk.dtype)])
      yield jax.device_put(chunk, parallel.data_sharded(self.mesh)), size


# The datasets held on every device may take at most this share of one device's memory; the rest
# is for the model, its activations and the optimiser.
DEVICE_SHARE = 0.4


def device_memory_bytes() -> int:
  """One device's memory: the allocator's limit on GPUs and TPUs, the host's RAM on the CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def check_fits(datasets, memory: int | None = None) -> None:
  """A DataError, before anything is placed, when the datasets' uint8 splits would take more
  than DEVICE_SHARE of one device's memory (each device holds a copy)."""
  need = sum(s.nbytes for d in datasets if d is not None for s in (d.train, d.test) if s is not None)
  memory = device_memory_bytes() if memory is None else memory
  if need > DEVICE_SHARE * memory:
    names = ', '.join(d.name for d in datasets if d is not None)
    raise DataError(f'{names} takes {need / 2**30:.2f} GiB as uint8 arrays on every device, more than '
                    f'{DEVICE_SHARE:.0%} of its {memory / 2**30:.1f} GiB ({DEVICE_SHARE * memory / 2**30:.2f} '
                    'GiB fit): lower --config.image_size or --config.train_limit')


def make_inputs(config, mesh, label_fraction: float = 1.0, require_labels: bool = False):
  """(training inputs, evaluation inputs) for a stage: the config's dataset (a class-balanced
  label_fraction of its training split), and config.eval_dataset when given (else the same)."""
  dataset = data.load_from_config(config)
  if require_labels:
    _check_labelled(dataset, config)
  if label_fraction < 1.0:
    keep = data.balanced_subset(dataset.train.labels, label_fraction, dataset.num_classes,
                                config.label_seed)
    dataset = dataclasses.replace(dataset, train=dataset.train.subset(keep))
  eval_dataset = None
  if config.eval_dataset:
    eval_dataset = data.load_from_config(config, 'eval', image_size=dataset.image_size)
    _check_labelled(eval_dataset, config, field='eval_dataset')
  check_fits([dataset, eval_dataset])
  inputs = device_inputs(dataset, mesh, config.batch_size, config.seed)
  if eval_dataset is None:
    return inputs, inputs
  return inputs, device_inputs(eval_dataset, mesh, config.batch_size, config.seed, notices=False)


def _check_labelled(dataset, config, field: str = 'dataset') -> None:
  problems = []
  if not dataset.train.labelled:
    unlabelled = int(np.sum(dataset.train.labels < 0))
    problems.append(f'{unlabelled} of its {len(dataset.train.labels)} training images have no label')
  if dataset.test is None or not dataset.test.labelled:
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
