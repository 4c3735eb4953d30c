"""One 'data' mesh axis over every device of every process; batches are split along it.

    mesh = make_mesh()
    x = jax.device_put(x, replicated(mesh))
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax.core.errors import ConfigError


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: jax.devices(), every process's)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split across the 'data' axis."""
  return NamedSharding(mesh, P('data'))


def check_batch_size(batch_size: int, mesh: Mesh, field: str = 'batch_size') -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f'{field}={batch_size} is not divisible by the {n} devices: '
                      f'use a multiple of {n}, such as {max(n, batch_size // n * n)}')


def check_chunks(batch_size: int, chunks: int, mesh: Mesh) -> None:
  """ConfigError unless each device's share of the batch splits into `chunks` equal chunks
  (config.batch_chunks: each chunk takes as many rows from every device)."""
  n = mesh.devices.size
  per_device = batch_size // n
  if per_device % chunks:
    raise ConfigError(f'config.batch_chunks={chunks} is invalid: each of the {n} devices holds {per_device} images '
                      f'of the batch; use a divisor of {per_device}, such as {nearest_divisor(per_device, chunks)}')


def nearest_divisor(n: int, k: int) -> int:
  """The divisor of n closest to k (the smaller on a tie): what an error suggests."""
  return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


def put_replicated(tree, mesh: Mesh):
  """Places a host pytree (numpy arrays) on every device, in every process."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)
