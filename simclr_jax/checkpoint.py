"""Orbax checkpoints in workdir/checkpoints, and the encoder restore for later stages.

    manager = make_manager(workdir, keep=3)
    save(manager, step, state, meta)
    state, meta = restore_latest(manager, state)              # (None, None) when there is none
    encoder_vars, saved_config = restore_encoder('runs/pretrain')
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from simclr_jax.errors import CheckpointError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager with two items per step: 'state' (arrays) and 'meta' (JSON)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves asynchronously; Orbax writes to a temporary folder and renames it when complete."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


@contextlib.contextmanager
def _quiet_stderr_on_failure():
  """Sends stderr to /dev/null while Orbax reads; on failure waits briefly so that its reader
  threads' tracebacks (an asyncio loop closed under them) do not bury the one-line error."""
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  except Exception:
    time.sleep(1.0)
    raise
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _complete_steps(manager) -> list[int]:
  """Steps with a complete checkpoint on disk (temporary folders of interrupted saves excluded)."""
  if hasattr(manager, 'reload'):
    manager.reload()
    return sorted(manager.all_steps())
  return sorted(manager.all_steps(read=True))


def restore_latest(manager: ocp.CheckpointManager, target_state):
  """Restores the newest complete checkpoint onto target_state's structure and shardings."""
  steps = _complete_steps(manager)
  if not steps:
    return None, None
  step = steps[-1]
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
  path = os.path.join(str(manager.directory), str(step))
  try:
    with _quiet_stderr_on_failure():
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise CheckpointError(f'checkpoint {path} cannot be restored into this run '
                          f'({type(e).__name__}: {_first_line(e)}): it is corrupt or from another '
                          'config; move it away or use another --workdir') from None
  return restored['state'], restored['meta']


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0][:300] if lines else ''


def find_checkpoint(path: str) -> str:
  """Resolves a workdir, a checkpoints folder or one step folder to a step folder."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f'init_from {path!r} does not exist: point it at a pretraining workdir '
                          'or one of its checkpoints/<step> folders')
  if os.path.isdir(os.path.join(path, 'state')):
    return path
  folder = path if os.path.basename(path) == 'checkpoints' else os.path.join(path, 'checkpoints')
  steps = []
  if os.path.isdir(folder):
    steps = sorted(int(n) for n in os.listdir(folder)
                   if n.isdigit() and os.path.isdir(os.path.join(folder, n, 'state')))
  if not steps:
    raise CheckpointError(f'init_from {path!r} holds no complete checkpoint: point it at a '
                          'workdir whose run saved one (workdir/checkpoints/<step>)')
  return os.path.join(folder, str(steps[-1]))


def read_meta(step_dir: str) -> dict:
  try:
    with open(os.path.join(step_dir, 'meta', 'metadata')) as f:
      return json.load(f)
  except (OSError, ValueError):
    raise CheckpointError(f'checkpoint {step_dir} has no readable meta/metadata: it is corrupt '
                          'or not a simclr_jax checkpoint; point init_from at another run') from None


def restore_encoder(path: str) -> tuple[dict, dict]:
  """Reads only the encoder subtree of a pretraining or classifier checkpoint.

  Returns ({'params': ..., 'batch_stats': ...} as numpy arrays, the run's config dict).
  """
  step_dir = find_checkpoint(path)
  meta = read_meta(step_dir)
  if 'config' not in meta:
    raise CheckpointError(f'checkpoint {step_dir} carries no config: it is not a simclr_jax '
                          'checkpoint; point init_from at a simclr_jax workdir')
  try:
    with _quiet_stderr_on_failure():
      restored = _read_numpy_subtrees(os.path.join(step_dir, 'state'), ('params', 'batch_stats'))
  except Exception as e:
    raise CheckpointError(f'checkpoint {step_dir} cannot be read ({type(e).__name__}: '
                          f'{_first_line(e)}): it is corrupt or truncated; point init_from at '
                          'another checkpoint') from None
  if any('encoder' not in restored.get(k, {}) for k in ('params', 'batch_stats')):
    raise CheckpointError(f'checkpoint {step_dir} holds no encoder: it is not a simclr_jax model '
                          'checkpoint; point init_from at a pretraining workdir')
  encoder = {k: jax.tree.map(np.asarray, restored[k]['encoder']) for k in ('params', 'batch_stats')}
  return encoder, meta['config']



def _read_numpy_subtrees(path: str, keys) -> dict:
  """Reads the named top-level subtrees of a saved pytree as numpy arrays, on any device count."""
  from absl import logging
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Orbax warns that an item folder has no step metadata
  try:
    return _read_numpy_subtrees_quietly(path, keys)
  finally:
    logging.set_verbosity(verbosity)


def _read_numpy_subtrees_quietly(path: str, keys) -> dict:
  with ocp.PyTreeCheckpointer() as checkpointer:
    meta = checkpointer.metadata(path)
    tree = getattr(meta, 'item_metadata', meta)
    tree = getattr(tree, 'tree', tree)
    wanted = {k: tree[k] for k in keys if k in tree}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    try:
      return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=wanted, restore_args=restore_args, partial_restore=True))
    except TypeError:  # an Orbax without partial_restore: read everything, keep what is asked
      full_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      full = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=full_args))
      return {k: full[k] for k in wanted}
