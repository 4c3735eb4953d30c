"""SIGTERM and SIGINT at any moment: outside training they stop the run at once (status 75),
during training they become a flag that the loop reads between steps (it saves a checkpoint,
then stops with status 75).

    interrupts.install()                  # first thing in main: loading and compiling can be stopped
    with interrupts.deferred() as flag:   # the training loop: a signal only sets flag.name
      ...
      if flag.name: save(); raise Preempted(...)

A second SIGINT while a signal is deferred (a long save or evaluation) exits at once (status 75)
without saving; the last complete checkpoint stays.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from simclr_jax.errors import Preempted

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Flag:
  """The first signal's name ('SIGTERM' or 'SIGINT') once one has arrived, else None."""

  def __init__(self):
    self.name = None


_state = {'deferring': False, 'flag': _Flag(), 'installed': False}


def _handle(signum, frame):
  name = signal.Signals(signum).name
  flag = _state['flag']
  if _state['deferring']:
    if flag.name is None:
      flag.name = name
      return
    if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without the save
      print('preempted: second SIGINT: stopped at once without saving; rerun the same command to '
            'resume from the last complete checkpoint', file=sys.stderr, flush=True)
      os._exit(Preempted.exit_code)
    return
  # Outside training nothing is half-written that a rerun would not redo: stop now.
  print(f'preempted: {name} outside training (loading, compiling or writing results): the last '
        'complete checkpoint is kept; rerun the same command to resume', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(Preempted.exit_code)


def install() -> None:
  """Installs the handlers (main thread only; elsewhere this does nothing)."""
  if threading.current_thread() is not threading.main_thread():
    return
  for sig in _SIGNALS:
    signal.signal(sig, _handle)
  _state['installed'] = True


@contextlib.contextmanager
def deferred():
  """Within the block a signal sets the yielded flag's .name instead of stopping the run. Where
  install() was not called (library use), the handlers are installed for the block only."""
  previous = None
  if not _state['installed'] and threading.current_thread() is threading.main_thread():
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
      signal.signal(sig, _handle)
  _state['flag'] = flag = _Flag()
  _state['deferring'] = True
  try:
    yield flag
  finally:
    _state['deferring'] = False
    for sig, handler in (previous or {}).items():
      signal.signal(sig, handler)
