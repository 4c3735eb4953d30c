"""The workdir: one run at a time (a lock), a run that resumes only with its own config and data,
and results that a rerun never contradicts.

    prepare(workdir, config, fresh=False)    # raises ConfigError with one line; writes config.json
    check_data(workdir, {'dataset': source}, allow_change=False)   # after the data is described
    mark_started(workdir)                    # the run trains (or fits): what it wrote stays
    release_unstarted(workdir)               # after a refusal: what prepare made is removed

A run refused before it started (bad data, a missing init_from or teacher) leaves nothing behind:
release_unstarted removes the files prepare and the data check wrote (the lock, config.json,
data_manifest.json) and the folders prepare made, when they hold nothing else.

Checks, in order, before anything in the workdir is written: the path is not empty, lies apart
from every dataset folder and is writable; no other live run holds the lock (a lock left by a
killed run does not count); a newest checkpoint left incomplete is set aside; results.json without
a checkpoint is refused (its run cannot be resumed or told apart from a new one); the
run-defining fields match the run already there, read from its newest checkpoint (config.json only
where no checkpoint exists); epochs is not below what the checkpoint has trained. --fresh moves
whatever is there to workdir/previous-N first. In a multi-process run process 0 checks and every
process learns the outcome.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

from simclr_jax import config_base
from simclr_jax.train import checkpoint
from simclr_jax.data import registry
from simclr_jax.train import optim
from simclr_jax.core.errors import ConfigError
from simclr_jax.core.log import log, plural

LOCK_NAME = '.lock'
_held = {}  # path -> open file descriptor: the lock lasts as long as this process
# absolute workdir -> what this process's prepare made there: {'folders': the folders it created,
# outermost first, 'files': the names it created, 'started': whether the run went on to train}
_claims = {}


def prepare(workdir: str, config, fresh: bool = False) -> None:
  """Locks workdir for this run and checks that the run it holds (if any) is this config's."""
  import jax
  if not workdir:
    raise ConfigError('--workdir is empty: pass the folder for checkpoints and results, for '
                      'example --workdir=runs/pretrain')
  check_apart(workdir, config)
  check_not_checkpoints(workdir)
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


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_apart(workdir: str, config) -> None:
  """ConfigError when the workdir lies inside a dataset folder (its files would become data) or
  holds one (a --fresh or a cleanup would move the data)."""
  places = [(field, registry.local_folder(config[field])) for field in ('dataset', 'eval_dataset')
            if registry.local_folder(config[field])]
  if config.data_dir:
    places.append(('data_dir', os.path.abspath(config.data_dir)))
  for field, folder in places:
    if _inside(workdir, folder) or _inside(folder, workdir):
      where = 'inside' if _inside(workdir, folder) else 'around'
      raise ConfigError(f'--workdir {workdir!r} is {where} the dataset folder {folder!r} '
                        f'(config.{field}): a run never writes into its data; choose a --workdir '
                        'outside it')


def check_not_checkpoints(workdir: str) -> None:
  """ConfigError when the workdir is a run's checkpoints folder or lies inside one (a step folder),
  naming the run's workdir: a run there would nest a second run in the first one's checkpoints."""
  path = os.path.abspath(workdir)
  while True:
    if os.path.basename(path) == 'checkpoints':
      run = os.path.dirname(path)
      if os.path.exists(os.path.join(run, 'config.json')) or checkpoint.list_steps(path):
        where = 'the checkpoints folder' if path == os.path.abspath(workdir) else 'inside the checkpoints folder'
        raise ConfigError(f'--workdir {workdir!r} is {where} of the run in {run!r}: pass --workdir={run} to resume '
                          'or extend that run, or choose another --workdir')
    parent = os.path.dirname(path)
    if parent == path:
      return
    path = parent


def _missing_folders(workdir: str) -> list:
  """The folders of workdir's path that do not exist yet, outermost first."""
  out, path = [], os.path.abspath(workdir)
  while not os.path.exists(path):
    out.insert(0, path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return out


_OWN_FILES = (LOCK_NAME, 'config.json', 'data_manifest.json')  # what a run writes before it starts


def _prepare(workdir: str, config, fresh: bool) -> None:
  folders_made = _missing_folders(workdir)
  existed = {n for n in _OWN_FILES if os.path.exists(os.path.join(workdir, n))}
  _check_writable(workdir)
  acquire_lock(workdir)
  claim = _claims[os.path.abspath(workdir)] = {'folders': folders_made, 'existed': existed, 'archived': None,
                                               'started': False}
  if fresh and _has_run(workdir):
    claim['archived'] = archive_run(workdir, 'because of --fresh')
  elif not fresh:
    checkpoint.set_aside_incomplete(workdir)
    saved = _saved_config(workdir)
    if saved is not None and saved['checkpoint']:
      _check_same(workdir, config, saved['config'])
      meta = saved['meta']
      check_epochs(workdir, config.epochs, int(meta.get('step', 0)), int(meta.get('steps_per_epoch') or 0))
    elif os.path.exists(os.path.join(workdir, 'results.json')) and saved is not None and _fits_without_checkpoints(config):
      _check_same(workdir, config, saved['config'])  # a finished features probe: kept as it is
    elif os.path.exists(os.path.join(workdir, 'results.json')):
      raise ConfigError(f'workdir {workdir!r} holds results.json but no checkpoint (checkpoints/ was '
                        'deleted?): its run cannot be resumed, and a new one would overwrite its results; '
                        'pass --fresh to keep it in previous-N and start afresh, or choose another --workdir')
    elif _has_run(workdir) and (saved is None or _differs(config, saved['config']) or
                                set(os.listdir(workdir)) - {'config.json', LOCK_NAME}):
      claim['archived'] = archive_run(workdir, 'it saved no checkpoint')
    if os.path.exists(os.path.join(workdir, 'config.json')):
      return  # config.json keeps the run's first config; each checkpoint stores the current one
  path = os.path.join(workdir, 'config.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)


def mark_started(workdir: str) -> None:
  """The run in workdir trains (or fits) from here: a later error keeps what it wrote."""
  claim = _claims.get(os.path.abspath(workdir))
  if claim is not None:
    claim['started'] = True


def release_unstarted(workdir: str | None = None) -> None:
  """After a refusal: for the workdir (None: each one) this process prepared whose run did not
  start, removes the files it created there (the lock, config.json, data_manifest.json), moves
  back what prepare moved to previous-N, then removes the folders it created, innermost first,
  where they are left empty. The workdir is then as it was before."""
  for path, claim in list(_claims.items()):
    if claim['started'] or (workdir is not None and path != os.path.abspath(workdir)):
      continue
    del _claims[path]
    for name in _OWN_FILES:  # after an archive, only the lock is not this run's own
      if name not in claim['existed'] or (claim['archived'] and name != LOCK_NAME):
        with contextlib.suppress(OSError):
          os.remove(os.path.join(path, name))
    if claim['archived']:
      for name in os.listdir(claim['archived']):
        os.replace(os.path.join(claim['archived'], name), os.path.join(path, name))
      os.rmdir(claim['archived'])
    fd = _held.pop(os.path.join(path, LOCK_NAME), None)
    if fd is not None:
      os.close(fd)
    for folder in reversed(claim['folders']):
      with contextlib.suppress(OSError):
        os.rmdir(folder)  # only when empty


def _has_run(workdir: str) -> bool:
  """Whether the workdir holds anything of a run (besides the lock and earlier archives)."""
  return any(n != LOCK_NAME and not n.startswith(('previous-', '.write-test-')) for n in os.listdir(workdir))


def _differs(config, saved: dict) -> list:
  """The run-defining fields whose values differ from the saved config's (a field the saved config
  lacks, added by a later simclr_jax, is not compared)."""
  current = json.loads(config.to_json())
  fields = dict.fromkeys(config_base.run_defining_fields(saved) + config_base.run_defining_fields(current))
  return [f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in fields
          if k in saved and saved.get(k) != current.get(k)]


def _check_same(workdir: str, config, saved: dict) -> None:
  differ = _differs(config, saved)
  if differ:
    raise ConfigError(f'workdir {workdir!r} holds a run with another config ({", ".join(differ)}): '
                      'choose another --workdir, or pass --fresh to start afresh')


def _fits_without_checkpoints(config) -> bool:
  """The stages that write results.json without checkpoints (the features probe)."""
  return config.stage == 'linear_eval' and config.protocol == 'features'


def check_epochs(workdir: str, epochs: int, trained: int, steps_per_epoch: int) -> None:
  """ConfigError when `epochs` is below the `trained` steps of the run in workdir (counted in the
  checkpoint's own steps per epoch)."""
  if steps_per_epoch and optim.epochs_to_steps(epochs, steps_per_epoch) < trained:
    done = trained / steps_per_epoch
    raise ConfigError(f'config.epochs={epochs} is below what the run in {workdir!r} has already '
                      f'trained ({plural(trained, "step")} = {done:g} epoch{"" if done == 1 else "s"}): pass '
                      f'--config.epochs={-(-trained // steps_per_epoch)} or more, or another --workdir')


def check_data(workdir: str, sources: dict, allow_change: bool = False) -> None:
  """ConfigError when the data a run was trained on has changed since its newest checkpoint
  (images added, removed or modified, another TFDS version or split), naming what changed; with
  allow_change a notice instead. sources: role ('dataset', 'eval_dataset') -> datasets.Source."""
  step_dir = checkpoint.latest_step_dir(workdir)
  if step_dir is None:
    return
  saved = checkpoint.read_meta(step_dir, 'workdir').get('data') or {}
  manifest = _read_manifest(workdir)
  for role, source in sources.items():
    for split, now in source.identity.items():
      before = (saved.get(role) or {}).get(split)
      if before is None or now is None or before == now:
        continue
      change = describe_change(manifest.get(role, {}).get(split), source.manifest[split], before, now,
                               header=registry.local_folder(source.name) is None)
      message = (f'the {split} split of {source.name} (config.{role}) changed since checkpoint '
                 f'{os.path.basename(step_dir)} ({change})')
      if not allow_change:
        raise ConfigError(f'{message}: restore it, or pass --config.allow_data_change=True to continue '
                          'on the new data (steps per epoch and the test split may change), or start a '
                          'new --workdir')
      log(f'notice: {message}; training continues on the new data (config.allow_data_change=True)')


def describe_change(before: list | None, now: list, before_id: dict, now_id: dict, header: bool = False) -> str:
  """'3 images added, 1 removed, 2 modified (first: a.jpg)' from two manifests (one line a
  file: path, label, size, modification time), or the counts when the old list is unknown. With
  header, the first line names the data as a whole (TFDS: 'name version split count') and a
  change there is named first."""
  if before is None:
    return f'{before_id["count"]} images before, {now_id["count"]} now'
  if header and before[:1] != now[:1]:
    return f"{' '.join(before[:1])} -> {' '.join(now[:1])}"
  path = lambda line: line.rsplit(' ', 3)[0]
  old, new = {path(l): l for l in before}, {path(l): l for l in now}
  added = sorted(set(new) - set(old))
  removed = sorted(set(old) - set(new))
  modified = sorted(p for p in set(old) & set(new) if old[p] != new[p])
  parts = [f'{len(added)} added' if added else '', f'{len(removed)} removed' if removed else '',
           f'{len(modified)} modified' if modified else '']
  first = (added + removed + modified)[:3]
  return ', '.join(p for p in parts if p) + (f'; first: {", ".join(first)}' if first else '') or 'reordered'


MANIFEST = 'data_manifest.json'


def _read_manifest(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, MANIFEST)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def write_manifest(workdir: str, sources: dict) -> None:
  """workdir/data_manifest.json: the file lists of the data the run trains on, to name what
  changed should a resume find other data (process 0)."""
  import jax
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, MANIFEST)
  with open(path + '.tmp', 'w') as f:
    json.dump({role: s.manifest for role, s in sources.items()}, f)
  os.replace(path + '.tmp', path)


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
    meta = checkpoint.read_meta(step_dir, 'workdir')
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
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(fd)
      os.close(fd)
      raise ConfigError(f'workdir {workdir!r} is in use by another run ({holder}): wait for it to '
                        'end or stop it, or choose another --workdir') from None
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)  # a refused run removed the file after we opened it: lock the new one
  info = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)
  _held[path] = fd


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


def archive_run(workdir: str, why: str) -> str:
  """Moves everything in workdir (but the lock and earlier archives) to workdir/previous-<n>,
  with a notice saying why; returns that folder."""
  n = 1
  while os.path.exists(os.path.join(workdir, f'previous-{n}')):
    n += 1
  target = os.path.join(workdir, f'previous-{n}')
  os.makedirs(target)
  for name in os.listdir(workdir):
    if not name.startswith('previous-') and name != LOCK_NAME:
      os.replace(os.path.join(workdir, name), os.path.join(target, name))
  log(f'notice: the earlier run in {workdir} is moved to {target} ({why}); this run starts afresh')
  return target
