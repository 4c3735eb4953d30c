"""The loop's evaluation rounds: the evaluators due at an epoch end, run on the state just saved,
their figures written to metrics.jsonl and the record.

    rounds = Evaluation(task.evaluators, task.infer, eval_inputs, eval_batch_size, epochs, writer, record)
    rounds.due(epoch)                                  # the evaluators due then
    seconds = rounds.run(epoch, step, variables, window.epoch_means(), immediate)
"""
from __future__ import annotations

import time

from simclr_jax.core import interrupts
from simclr_jax.core.log import log
from simclr_jax.core.periodic import itstime
from simclr_jax.evals import EvalContext


class Evaluation:

  def __init__(self, evaluators, infer, inputs, batch: int, total_epochs: int, writer, record: dict):
    self.evaluators, self.infer, self.inputs, self.batch = evaluators, infer, inputs, batch
    self.total_epochs, self.writer, self.record = total_epochs, writer, record

  def due(self, epoch: int) -> list:
    return [e for e in self.evaluators if not e.skipped and itstime(epoch, e.every_epochs, self.total_epochs)]

  def run(self, epoch: int, step: int, variables, train_means: dict, immediate) -> float:
    """The round due at this epoch end (with the epoch's training means beside its figures), a
    signal stopping it at once (immediate()); returns the seconds it took."""
    due = self.due(epoch)
    seconds = 0.0
    if due:
      t0 = time.time()
      # The phase first: a signal that came just before is then named by what it stops.
      with interrupts.phase(f'evaluating (epoch {epoch})'), immediate():
        log(f'evaluating (epoch {epoch}): {", ".join(e.name for e in due)}')
        ctx = EvalContext(self.infer, variables, self.inputs, self.batch)
        scalars = {}
        for evaluator in due:
          scalars.update(evaluator(ctx))
      scalars.update(train_means)
      seconds = time.time() - t0
      self.writer.write('eval', step, {'epoch': epoch, **scalars})
      self.record['evals'].append({'step': step, 'epoch': epoch, **scalars})
      log(f'epoch {epoch} ' + ' '.join(f'{k} {v:.4g}' for k, v in scalars.items() if isinstance(v, float)))
    self.record['evaluated_epoch'] = epoch
    return seconds
