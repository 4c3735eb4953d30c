"""The loop's checkpoints: the newest one restored at the start, the state saved at the steps the
loop decides, and what a signal's one line says is kept.

    saver = Saver(workdir, keep=3)
    state, meta = saver.restore(task.state)   # (None, {}) when the workdir holds none
    seconds = saver.save(state, step, meta)   # the meta alone when that step is saved already
    saver.saved_step, saver.close()
"""
from __future__ import annotations

import time

from simclr_jax.core import interrupts
from simclr_jax.train import checkpoint, optim


class Saver:

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.manager = checkpoint.make_manager(workdir, keep=keep)
    self.saved_step = None
    interrupts.set_resume_hint(self.hint())

  def restore(self, template):
    """(the newest checkpoint's state, its meta), or (None, {}); the optimiser state takes the
    schedule of `template` (the config now, whose epochs may have grown)."""
    state, meta = checkpoint.restore_latest(self.manager, template)
    if state is None:
      return None, {}
    state = state.replace(opt_state=optim.with_schedule_of(state.opt_state, template.opt_state))
    self.saved_step = int(state.step)
    interrupts.set_resume_hint(self.hint())
    return state, meta

  def hint(self) -> str:
    if self.saved_step is None:
      return 'nothing was saved yet; rerun the same command to start again'
    return f'checkpoint {self.saved_step} is kept; rerun the same command to resume from it'

  def save(self, state, step: int, meta: dict) -> float:
    """Checkpoints `state` as step `step` (its meta only, when that step is saved already: a run
    resumed at it holds the same state); returns the seconds it took."""
    t0 = time.time()
    with interrupts.phase('saving a checkpoint'):
      if step in checkpoint.list_steps(self.workdir):
        checkpoint.update_meta(self.manager, step, meta)
      else:
        checkpoint.save(self.manager, step, state, meta)
    self.saved_step = step
    interrupts.set_resume_hint(self.hint())
    return time.time() - t0

  def close(self) -> None:
    self.manager.close()
