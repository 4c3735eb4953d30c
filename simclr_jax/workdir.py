"""The workdir: one run at a time (a lock), and a run that resumes only with its own config.

    prepare(workdir, config, fresh=False)  # raises ConfigError with one line; writes config.json

Checks, in order, before anything in the workdir is written: the path is not empty and is
writable; no other live run holds the lock (a lock left by a killed run does not count); the
run-defining fields match the run already there, read from its newest checkpoint (config.json
only where no checkpoint exists); epochs is not below what the checkpoint has trained. In a
multi-process run process 0 checks and every process learns the outcome.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from simclr_jax import checkpoint, config_base
from simclr_jax.errors import ConfigError

LOCK_NAME = '.lock'
_held = {}  # path -> open file descriptor: the lock lasts as long as this process


def prepare(workdir: str, config, fresh: bool = False) -> None:
  """Locks workdir for this run and checks that the run it holds (if any) is this config's."""
  import jax
  if not workdir:
    raise ConfigError('--workdir is empty: pass the folder for checkpoints and results, for '
                      'example --workdir=runs/pretrain')
  if jax.process_count() == 1:
    _prepare(workdir, config, fresh)
    return
  from jax.experimental import multihost_utils
  import numpy as np
  message = ''
  if jax.process_index() == 0:
    try:
      _prepare(workdir, config, fresh)
    except ConfigError as e:
      message = str(e)
  failed = multihost_utils.broadcast_one_to_all(np.int32(bool(message)))
  if message:
    raise ConfigError(message)
  if int(failed):
    raise ConfigError(f'process 0 refused workdir {workdir!r} (its error line says why)')


def _prepare(workdir: str, config, fresh: bool) -> None:
  _check_writable(workdir)
  acquire_lock(workdir)
  path = os.path.join(workdir, 'config.json')
  saved = _saved_config(workdir)
  if saved is not None and fresh:
    archive_run(workdir)
  elif saved is not None:
    current = json.loads(config.to_json())
    differ = [k for k in config_base.RUN_DEFINING_FIELDS if saved['config'].get(k) != current.get(k)]
    if differ and saved['checkpoint']:
      detail = ', '.join(f'{k}: {saved["config"].get(k)!r} -> {current.get(k)!r}' for k in differ)
      raise ConfigError(f'workdir {workdir!r} holds a run with another config ({detail}): '
                        'choose another --workdir, or pass --fresh to start afresh')
    if differ:  # a run that never saved: keep its files aside, start anew
      archive_run(workdir)
    else:
      meta = saved['meta']
      check_epochs(workdir, config.epochs, int(meta.get('step', 0)), int(meta.get('steps_per_epoch') or 0))
      if os.path.exists(path):
        return  # config.json keeps the run's first config; each checkpoint stores the current one
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)


def check_epochs(workdir: str, epochs: int, trained: int, steps_per_epoch: int) -> None:
  """ConfigError when `epochs` is below the `trained` steps of the run in workdir."""
  if steps_per_epoch and epochs * steps_per_epoch < trained:
    raise ConfigError(f'config.epochs={epochs} is below what the run in {workdir!r} has already '
                      f'trained ({trained} steps = {trained / steps_per_epoch:g} epochs): pass '
                      f'--config.epochs={-(-trained // steps_per_epoch)} or more, or another --workdir')


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} is not writable ({e.strerror}): choose another '
                      '--workdir or fix its permissions') from None


def _saved_config(workdir: str):
  """{'config', 'checkpoint', 'meta'} of the run in workdir, or None. The newest checkpoint's
  stored config wins over config.json, which may be missing or edited."""
  step_dir = checkpoint.latest_step_dir(workdir)
  if step_dir is not None:
    meta = checkpoint.read_meta(step_dir)
    if 'config' in meta:
      return {'config': meta['config'], 'checkpoint': step_dir, 'meta': meta}
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return {'config': json.load(f), 'checkpoint': None, 'meta': {}}
  except (OSError, ValueError):
    raise ConfigError(f'{path} is unreadable: pass --fresh to start afresh (the old run is '
                      'kept in a previous-N folder) or choose another --workdir') from None


def acquire_lock(workdir: str) -> None:
  """Holds workdir/.lock (flock) until this process ends. A live holder makes this raise
  ConfigError naming it; the lock of a process that died is free (the kernel drops it)."""
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  if path in _held:
    return
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    holder = _read_holder(fd)
    os.close(fd)
    raise ConfigError(f'workdir {workdir!r} is in use by another run ({holder}): wait for it to '
                      'end or stop it, or choose another --workdir') from None
  info = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)
  _held[path] = fd


def release_lock(workdir: str) -> None:
  fd = _held.pop(os.path.join(os.path.abspath(workdir), LOCK_NAME), None)
  if fd is not None:
    os.close(fd)


def _read_holder(fd: int) -> str:
  for _ in range(20):  # the holder writes its details just after taking the lock
    try:
      info = json.loads(os.pread(fd, 4096, 0).decode() or 'null')
    except ValueError:
      info = None
    if info:
      return f'pid {info["pid"]} on {info["host"]}, started {info["started"]}'
    time.sleep(0.05)
  return 'holder unknown'


def archive_run(workdir: str) -> None:
  """Moves everything in workdir (but the lock and earlier archives) to workdir/previous-<n>."""
  n = 1
  while os.path.exists(os.path.join(workdir, f'previous-{n}')):
    n += 1
  target = os.path.join(workdir, f'previous-{n}')
  os.makedirs(target)
  for name in os.listdir(workdir):
    if not name.startswith('previous-') and name != LOCK_NAME:
      os.replace(os.path.join(workdir, name), os.path.join(target, name))
