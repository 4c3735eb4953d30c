"""Orbax checkpoints in workdir/checkpoints, and the encoder restore for later stages.

    manager = make_manager(workdir, keep=3)
    save(manager, step, state, meta)             # synchronous; a failure raises CheckpointError
    update_meta(manager, step, meta)             # rewrite the meta of an existing step
    state, meta = restore_latest(manager, state)  # (None, None) when there is none
    list_steps(workdir)                          # the complete checkpoints' steps, ascending
    variables, meta = restore_encoder('runs/pretrain', head_layers=0)

Each checkpoint carries, in its meta, the format version (models.FORMAT_VERSION) and a CRC-32
of every array of the state; a restore checks both, so a damaged file or a checkpoint of an
older layout stops with one line instead of training on garbage. A step folder counts as a
checkpoint once it holds both the arrays and the meta; a newest one without its meta is set
aside (renamed <step>.incomplete) and the run resumes from the one before, with a notice.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from simclr_jax.core.errors import CheckpointError, summary
from simclr_jax.core.log import log
from simclr_jax.models import FORMAT_VERSION

# The layout of a saved training state beyond its model: 2 since the optimiser's state holds its
# learning-rate schedule (optim.scheduled); 3 since LARS is optim.scale_by_lars (its state holds its
# own step count, and its form decides the order of its parts). A run saved with another layout
# cannot be resumed (layout 2 can, but for LARS); its encoder still serves init_from and
# teacher_from, which read the model only.
STATE_LAYOUT = 3


def resumable_layout(meta: dict) -> bool:
  """Whether a checkpoint's training state has the layout this simclr_jax resumes."""
  layout = meta.get('state_layout', 1)
  return layout == STATE_LAYOUT or (layout == 2 and (meta.get('config') or {}).get('optimizer') != 'lars')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _folder(path: str) -> str:
  return path if os.path.basename(os.path.normpath(path)) == 'checkpoints' else checkpoint_dir(path)


def _step_folders(folder: str) -> list[int]:
  try:
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())
  except OSError:
    return []


def _complete(step_dir: str) -> bool:
  return os.path.isdir(os.path.join(step_dir, 'state')) and os.path.isfile(os.path.join(step_dir, 'meta', 'metadata'))


def list_steps(path: str) -> list[int]:
  """Steps of the complete checkpoints under a workdir or its checkpoints/ folder, ascending.

  Orbax writes each step into a temporary folder and renames it to <step> once complete, so a
  folder named by its step alone, holding the arrays and the meta, is a complete checkpoint; the
  temporary ones are never listed.
  """
  folder = _folder(path)
  return [s for s in _step_folders(folder) if _complete(os.path.join(folder, str(s)))]


def set_aside_incomplete(path: str) -> None:
  """Renames step folders newer than the newest complete checkpoint that lack their arrays or
  meta to <step>.incomplete (nothing is deleted), with a notice; the run resumes from the
  complete one before them."""
  folder = _folder(path)
  complete = list_steps(folder)
  for step in _step_folders(folder):
    if complete and step <= complete[-1] or step in complete:
      continue
    source = os.path.join(folder, str(step))
    target = f'{source}.incomplete'
    n = 1
    while os.path.exists(target):
      target, n = f'{source}.incomplete-{n}', n + 1
    os.replace(source, target)
    after = f'resuming from checkpoint {complete[-1]}' if complete else 'starting afresh'
    log(f'notice: checkpoint {step} in {folder} is incomplete (no arrays or no meta/metadata): it is '
        f'moved to {os.path.basename(target)} and the run is {after}')


def checksums(tree) -> dict:
  """{path: CRC-32 of the array's bytes} of every leaf of a state (this process's copy)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    data = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
    out[jax.tree_util.keystr(path)] = f'{zlib.crc32(np.ascontiguousarray(np.asarray(data)).tobytes()):08x}'
  return out


def corrupt(step_dir: str, what: str) -> CheckpointError:
  """The one line for a damaged checkpoint of a run: what is wrong, and the way on (the previous
  checkpoint, or --fresh when there is none)."""
  steps = [s for s in list_steps(os.path.dirname(step_dir)) if str(s) != os.path.basename(step_dir)]
  fix = (f'move {step_dir} away to resume from checkpoint {steps[-1]}' if steps else
         'start afresh with --fresh (the run is kept in workdir/previous-N)')
  return CheckpointError(f'checkpoint {step_dir} is corrupt: {what}: {fix}')


def verify(tree, meta: dict, step_dir: str, prefix: str = '') -> None:
  """CheckpointError naming the first array of `tree` (a subtree at `prefix` of the saved state)
  whose checksum differs from the one saved with it."""
  saved = meta.get('checksums') or {}
  for name, crc in checksums(tree).items():
    if saved.get(prefix + name) != crc:
      raise corrupt(step_dir, f'the array {prefix + name} does not match the checksum saved with it (a damaged '
                              f'file under {step_dir}/state)')


def check_format(meta: dict, step_dir: str, role: str = 'this run') -> None:
  found = meta.get('format', 1)
  if found != FORMAT_VERSION:
    raise CheckpointError(f'checkpoint {step_dir} has format {found}, this simclr_jax reads format '
                          f'{FORMAT_VERSION} (since format 2 strided convolutions are padded as torchvision '
                          f'pads them and heads are MLPHead layers): it cannot be used for {role}; '
                          'train it again, or read it with the simclr_jax that wrote it')


def latest_step_dir(workdir: str) -> str | None:
  steps = list_steps(workdir)
  return os.path.join(checkpoint_dir(workdir), str(steps[-1])) if steps else None


def make_manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager with two items per step: 'state' (arrays) and 'meta' (JSON). Saves are
  synchronous, so a failed save stops the run at that step rather than later."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Writes checkpoints/<step> (via a temporary folder renamed when complete). A failure (no space,
  no permission, a quota) removes the partial folder and raises CheckpointError naming the cause;
  the checkpoints already there are untouched."""
  folder = str(manager.directory)
  _warn_if_space_is_short(folder)
  meta = {**meta, 'format': FORMAT_VERSION, 'state_layout': STATE_LAYOUT, 'checksums': checksums(state)}
  try:
    with _quiet_stderr_on_failure():
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
      manager.wait_until_finished()
  except Exception as e:
    _remove_partial(folder, step)
    steps = list_steps(folder)
    resume = (f'rerun the same command to resume from checkpoint {steps[-1]}' if steps
              else 'rerun the same command to start again')
    raise CheckpointError(f'cannot write checkpoint {step} in {folder} ({_cause(e)}): free space '
                          f'or fix permissions there, then {resume}') from None


def update_meta(manager: ocp.CheckpointManager, step: int, meta: dict) -> None:
  """Replaces the meta item of the existing checkpoint <step> (atomically: a new file renamed
  over the old), e.g. to record an evaluation made after that step was saved."""
  if jax.process_index() != 0:
    return
  path = os.path.join(str(manager.directory), str(step), 'meta', 'metadata')
  tmp = f'{path}.tmp{os.getpid()}'
  with open(path) as f:
    saved = json.load(f)
  meta = {**meta, **{k: saved.get(k) for k in ('format', 'state_layout', 'checksums')}}
  try:
    with open(tmp, 'w') as f:
      json.dump(meta, f)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise CheckpointError(f'cannot update checkpoint {step} in {manager.directory} '
                          f'({e.strerror}): free space or fix permissions there, then rerun the '
                          'same command') from None


def _cause(e: BaseException) -> str:
  """The OS error behind an Orbax or TensorStore failure, else the first line of the message."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return os.strerror(seen.errno)
    seen = seen.__cause__ or seen.__context__
  text = str(e)
  for code in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM):
    if os.strerror(code).lower() in text.lower():
      return os.strerror(code)
  return summary(e, 300)


def _remove_partial(folder: str, step: int) -> None:
  if not os.path.isdir(folder):
    return
  for name in os.listdir(folder):
    if name.startswith(f'{step}.') and 'tmp' in name:
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _folder_bytes(path: str) -> int:
  total = 0
  for dirpath, _, files in os.walk(path):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(dirpath, f))
      except OSError:
        pass
  return total


def _warn_if_space_is_short(folder: str) -> None:
  """A notice when the free space is less than twice the newest checkpoint's size."""
  from simclr_jax.core.log import log
  steps = list_steps(folder)
  if not steps:
    return
  size = _folder_bytes(os.path.join(folder, str(steps[-1])))
  try:
    free = shutil.disk_usage(folder).free
  except OSError:
    return
  if free < 2 * size:
    log(f'notice: {free / 2**20:.1f} MiB free in {folder}, a checkpoint takes {size / 2**20:.1f} '
        'MiB: free space there before a save fails')


@contextlib.contextmanager
def _quiet_stderr_on_failure():
  """Sends stderr to /dev/null while Orbax works; on failure waits briefly so that its worker
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


def restore_latest(manager: ocp.CheckpointManager, target_state):
  """Restores the newest complete checkpoint onto target_state's structure and shardings,
  checking its format and its arrays' checksums."""
  steps = list_steps(str(manager.directory))
  if not steps:
    return None, None
  step = steps[-1]
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
  path = os.path.join(str(manager.directory), str(step))
  meta = read_meta(path, 'workdir')
  check_format(meta, path, 'resuming this run')
  if not resumable_layout(meta):
    raise CheckpointError(f'checkpoint {path} holds a training state of layout {meta.get("state_layout", 1)}, '
                          f'written by an older simclr_jax (this one resumes layout {STATE_LAYOUT}, whose '
                          'optimiser holds its schedule and whose LARS is solo-learn\'s or google-research/simclr\'s '
                          'form): it cannot be resumed; start afresh with --fresh (the '
                          'run is kept in workdir/previous-N), or finish it with the simclr_jax that wrote it '
                          '(its encoder still serves --config.init_from)')
  try:
    with _quiet_stderr_on_failure():
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  except Exception:  # the run-defining fields and the layout matched: the files are damaged
    raise corrupt(path, f'its arrays cannot be read (a damaged, truncated or missing file under {path}/state)') from None
  verify(restored['state'], restored['meta'], path)
  return restored['state'], restored['meta']


def find_checkpoint(path: str, role: str = 'init_from') -> str:
  """Resolves a workdir, a checkpoints folder or one step folder to a step folder. `role` names
  the argument in errors (init_from, load_encoder's path)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f'{role} {path!r} does not exist: point it at a simclr_jax workdir '
                          'or one of its checkpoints/<step> folders')
  if os.path.isdir(os.path.join(path, 'state')):
    return path
  steps = list_steps(path)
  if not steps:
    raise CheckpointError(f'{role} {path!r} holds no complete checkpoint: point it at a '
                          'workdir whose run saved one (workdir/checkpoints/<step>)')
  folder = path if os.path.basename(path) == 'checkpoints' else checkpoint_dir(path)
  return os.path.join(folder, str(steps[-1]))


def read_meta(step_dir: str, role: str = 'init_from') -> dict:
  """The meta of a step folder; one line when it cannot be read (role 'workdir': the run's own
  checkpoint, named corrupt with the way on; else the argument that points at it)."""
  try:
    with open(os.path.join(step_dir, 'meta', 'metadata')) as f:
      return json.load(f)
  except (OSError, ValueError):
    if role == 'workdir':
      raise corrupt(step_dir, f'its record {step_dir}/meta/metadata cannot be read (a damaged or truncated '
                              'file)') from None
    raise CheckpointError(f'checkpoint {step_dir} has no readable meta/metadata: it is corrupt '
                          f'or not a simclr_jax checkpoint; point {role} at another run') from None


def _restore_variables(path: str, role: str) -> tuple[dict, dict, str]:
  """(the saved params and batch_stats as numpy arrays, the checkpoint's meta, its folder), its
  format checked; one line naming what is wrong."""
  step_dir = find_checkpoint(path, role)
  meta = read_meta(step_dir, role)
  if 'config' not in meta:
    raise CheckpointError(f'checkpoint {step_dir} carries no config: it is not a simclr_jax '
                          f'checkpoint; point {role} at a simclr_jax workdir')
  check_format(meta, step_dir, role)
  try:
    with _quiet_stderr_on_failure():
      restored = _read_numpy_subtrees(os.path.join(step_dir, 'state'), ('params', 'batch_stats'))
  except Exception:
    raise CheckpointError(f'checkpoint {step_dir} cannot be read: it is corrupt (a damaged, truncated or missing '
                          f'file under {step_dir}/state); point {role} at another checkpoint') from None
  if 'encoder' not in restored.get('params', {}):
    raise CheckpointError(f'checkpoint {step_dir} holds no encoder: it is not a simclr_jax model '
                          f'checkpoint; point {role} at a pretraining workdir')
  return restored, meta, step_dir


def restore_encoder(path: str, role: str = 'init_from', head_layers: int = 0) -> tuple[dict, dict]:
  """Reads the encoder of a pretraining or classifier checkpoint and, with head_layers = K > 0,
  the first K layers of its projector (SimCLR v2's fine-tuning from inside the head).

  Returns ({'params': {'encoder', ['projector']}, 'batch_stats': ...} as numpy arrays, checked
  against their checksums; the checkpoint's meta: the run's 'config', 'model' (with its 'image_shape'),
  'step', ...).
  """
  restored, meta, step_dir = _restore_variables(path, role)
  layers = [f'dense_{i}' for i in range(head_layers)] + [f'norm_{i}' for i in range(head_layers)]
  out = {}
  for collection in ('params', 'batch_stats'):
    tree = restored.get(collection) or {}
    out[collection] = {'encoder': jax.tree.map(np.asarray, tree.get('encoder', {}))}  # a ViT has no statistics
    verify(out[collection]['encoder'], meta, step_dir, f".{collection}['encoder']")
    if head_layers:
      projector = {k: v for k, v in tree.get('projector', {}).items() if k in layers}
      out[collection]['projector'] = jax.tree.map(np.asarray, projector)
      verify(projector, meta, step_dir, f".{collection}['projector']")
  return out, meta


def restore_classifier(path: str, role: str = 'teacher_from') -> tuple[dict, dict]:
  """Every variable of a classifier checkpoint (encoder, head layers, head) as numpy arrays,
  checked against their checksums, and the checkpoint's meta; one line when it has no head."""
  restored, meta, step_dir = _restore_variables(path, role)
  if 'head' not in restored['params']:
    raise CheckpointError(f'{role} {path!r} is a {meta["config"].get("stage")!r} run, which has no '
                          'classifier head: point it at a finetune, supervised or distill workdir')
  out = {c: jax.tree.map(np.asarray, restored.get(c) or {}) for c in ('params', 'batch_stats')}
  for collection, tree in out.items():
    verify(tree, meta, step_dir, f'.{collection}')
  return out, meta


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
