"""SIGTERM and SIGINT at any moment, each honoured within seconds with exit status 75.

    interrupts.install()                  # the CLI's first step: a signal stops the run at once
    with interrupts.phase('evaluating'):  # names what was stopped in the one-line message
      ...
    with interrupts.deferred() as flag:   # training: progress since the last checkpoint exists,
      ...                                 # so a signal only sets flag.name; the loop saves, then stops
    with interrupts.temporary(path):      # a file being written: removed if a signal stops the run

A watcher thread reads the signals from a wakeup pipe, so it acts even while the main thread is
inside a long computation (compiling, an evaluation, a save): outside deferred() it removes the
registered temporary files, prints one `preempted:` line and exits at once; inside, it sets the
flag, and a second SIGINT exits at once without saving. Library use (no install()): deferred()
installs the handlers for its block, and a signal outside it raises Preempted in the main thread.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from simclr_jax.core.errors import Preempted

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Flag:
  """The first signal's name ('SIGTERM' or 'SIGINT') once one has arrived, else None."""

  def __init__(self):
    self.name = None


_state = {'installed': False, 'deferring': 0, 'flag': _Flag(), 'phase': 'starting',
          'temporary': set(), 'lock': threading.Lock(), 'resume': 'rerun the same command to resume'}


def _stop_now(name: str, detail: str = '') -> None:
  """Removes the temporary files being written, prints the line and exits with status 75."""
  for path in list(_state['temporary']):
    try:
      os.remove(path)
    except OSError:
      pass
  message = detail or f'{name} while {_state["phase"]}: {_state["resume"]}'
  try:
    sys.stdout.flush()
  except Exception:  # a closed or broken stdout must not keep the process alive
    pass
  # To the stderr of install() time: a save in progress points fd 2 at /dev/null (checkpoint.py
  # quiets Orbax), and a second SIGINT during it would otherwise print nothing.
  os.write(_state.get('stderr', 2), f'preempted: {message}\n'.encode('utf-8', 'backslashreplace'))
  os._exit(Preempted.exit_code)


def _on_signal(signum: int) -> None:
  """What a signal does, decided in the watcher thread (CLI) or the handler (library use)."""
  name = signal.Signals(signum).name
  with _state['lock']:
    flag = _state['flag']
    if _state['deferring']:
      if flag.name is None:
        flag.name = name
        return
      if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without the save
        _stop_now(name, 'second SIGINT: stopped at once without saving; rerun the same command to '
                        'resume from the last complete checkpoint')
      return
  if _state['installed']:
    _stop_now(name)
  raise Preempted(f'{name} while {_state["phase"]}: {_state["resume"]}')


def _watch(read_fd: int) -> None:
  while True:
    try:
      data = os.read(read_fd, 64)
    except InterruptedError:
      continue
    except OSError:
      return
    for signum in data:
      if signum in _SIGNALS:
        _on_signal(signum)


def _handler(signum, frame):
  """The Python-level handler: the watcher has acted already where one runs."""
  if not _state['installed']:
    _on_signal(signum)


def install() -> None:
  """The CLI's handlers and watcher thread (main thread only; elsewhere this does nothing).
  Calling it again puts the handlers back, should a library (jax.distributed) have taken them."""
  if threading.current_thread() is not threading.main_thread():
    return
  if 'write_fd' not in _state:
    _state['stderr'] = os.dup(2)
    read_fd, _state['write_fd'] = os.pipe()
    os.set_blocking(_state['write_fd'], False)
    threading.Thread(target=_watch, args=(read_fd,), name='simclr_jax-signals', daemon=True).start()
  for sig in _SIGNALS:
    signal.signal(sig, _handler)
  signal.set_wakeup_fd(_state['write_fd'], warn_on_full_buffer=False)
  _state['installed'] = True


def set_resume_hint(text: str) -> None:
  """What the one-line message tells the user to do, e.g. which checkpoint a rerun resumes from."""
  _state['resume'] = text


@contextlib.contextmanager
def phase(name: str):
  """Names what the run is doing ('loading the data', 'evaluating', ...) for the message."""
  previous, _state['phase'] = _state['phase'], name
  try:
    yield
  finally:
    _state['phase'] = previous


@contextlib.contextmanager
def temporary(path: str):
  """A file being written: a signal that stops the run removes it; so does an error."""
  _state['temporary'].add(path)
  try:
    yield path
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(path)
    raise
  finally:
    _state['temporary'].discard(path)


@contextlib.contextmanager
def deferred():
  """Within the block a signal sets the yielded flag's .name instead of stopping the run. Where
  install() was not called (library use), the handlers are installed for the block only."""
  previous = None
  if not _state['installed'] and threading.current_thread() is threading.main_thread():
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
      signal.signal(sig, _handler)
  with _state['lock']:
    _state['flag'] = flag = _Flag()
    _state['deferring'] += 1
  try:
    yield flag
  finally:
    with _state['lock']:
      _state['deferring'] -= 1
    for sig, handler in (previous or {}).items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def immediate():
  """Within a deferred() block: a stretch with nothing unsaved (the state equals the last
  checkpoint) where a signal stops the run at once, e.g. compiling or an evaluation round."""
  with _state['lock']:
    saved, _state['deferring'] = _state['deferring'], 0
    pending = _state['flag'].name
  if pending:  # a signal that arrived just before: stop here
    _on_signal(signal.Signals[pending].value)
  try:
    yield
  finally:
    with _state['lock']:
      _state['deferring'] = saved
