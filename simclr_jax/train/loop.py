"""The step-indexed loop around the training step (resume, logs, evaluators, checkpoints,
signals), each periodic action its own small piece (train.window, train.saver, train.evaluation).

    task = Task(state, step_fn, inputs, evaluators, infer, summarize)
    results = run(task, workdir, LoopSettings(epochs=..., steps_per_epoch=..., ...))

The loop reads top to bottom: for each step k it runs the compiled step, then the periodic
actions, each decided by one helper from (count, every, total): logging (every N steps or every
so many seconds), a stop on SIGTERM or SIGINT (checkpoint, then exit 75), and at epoch ends the
finiteness check, a checkpoint and the due evaluators. A checkpoint is written before each
evaluation round, so a signal during an evaluation stops the run at once and loses nothing.
results.json is built from the record each checkpoint carries (last training scalars, every
evaluation, images/s, training time), so a rerun of a finished run, a deleted metrics.jsonl or a
stop during the final evaluation never makes it worse.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from simclr_jax.core import interrupts
from simclr_jax.core.errors import NonFiniteError, Preempted
from simclr_jax.core.log import log, plural
from simclr_jax.core.periodic import itstime
from simclr_jax.train import checkpoint, compile_cache, optim
from simclr_jax.train.evaluation import Evaluation
from simclr_jax.train.metric_writer import MetricWriter, write_results
from simclr_jax.train.saver import Saver
from simclr_jax.train.step import TrainState
from simclr_jax.train.window import Window


@dataclasses.dataclass
class Task:
  """What the loop needs from a stage."""
  state: TrainState                 # initial state (replicated on the mesh)
  step_fn: Callable                 # from make_train_step
  inputs: Any                       # an input path of simclr_jax.data.pipeline
  evaluators: list                  # simclr_jax.evals evaluators, each with every_epochs
  infer: Callable                   # (variables, uint8 images) -> dict of outputs, eval mode
  summarize: Callable[[dict, dict], dict]  # (record, run facts) -> results.json
  schedule: Callable | None = None  # step -> learning rate, for the logs
  notes: dict = dataclasses.field(default_factory=dict)  # extra fields for results.json
  eval_inputs: Any = None           # the evaluators' splits (default: inputs)
  monitor: Callable | None = None   # state -> {scalar name: value} at logging steps (collapse)
  meta: dict = dataclasses.field(default_factory=dict)  # saved with each checkpoint: {'model': spec}
  describe: tuple = ()              # what the model line adds: views, chunks, remat, a queue
  model: Any = None                 # the Flax module and the loss (benchmarks, tests)
  loss_fn: Callable | None = None


@dataclasses.dataclass
class LoopSettings:
  """The loop's settings, read from the config by the stage (stage.loop_settings)."""
  epochs: int
  steps_per_epoch: int
  eval_batch_size: int = 1000
  log_every_steps: int = 50
  log_every_seconds: float = 30.0
  checkpoint_every_epochs: int = 10
  keep_checkpoints: int = 3
  skip_nonfinite: bool = False
  meta: dict = dataclasses.field(default_factory=dict)  # saved with each checkpoint: config, model, data

  @property
  def total_steps(self) -> int:
    """The run's length in steps, which the stages pass down to the task and optimiser."""
    return optim.epochs_to_steps(self.epochs, self.steps_per_epoch)


def new_record() -> dict:
  """What a checkpoint remembers of the run so far, for results.json."""
  return {'train': None, 'evals': [], 'rates': [], 'first_rates': [], 'final_step': None,
          'train_seconds': 0.0, 'evaluated_epoch': 0, 'compile_seconds': None, 'compiles': []}


def finished_results(workdir: str, epochs: int) -> dict | None:
  """results.json of a run in workdir that has trained and evaluated all of `epochs`, with a
  notice; None when there is work left (or results.json is missing)."""
  step_dir = checkpoint.latest_step_dir(workdir)
  path = os.path.join(workdir, 'results.json')
  if step_dir is None or not os.path.exists(path):
    return None
  meta = checkpoint.read_meta(step_dir, 'workdir')
  total = optim.epochs_to_steps(epochs, int(meta.get('steps_per_epoch') or -1))
  if meta.get('step') != total or (meta.get('record') or {}).get('final_step') != total:
    return None
  log(f'the run in {workdir} is complete ({plural(epochs, "epoch")}, {plural(total, "step")}): '
      'results.json is kept as it is; pass a larger --config.epochs to train further')
  import json
  with open(path) as f:
    return json.load(f)


def _stop_requested(flag, sync_point: bool) -> str | None:
  """The signal that stops the run here, the same on every process: alone, a process reads its
  own flag at every step; several processes agree at sync points (logging, epoch ends) by an
  all-gather, so all save at the same step even when only one was signalled."""
  if jax.process_count() == 1:
    return flag.name
  if not sync_point:
    return None
  from jax.experimental import multihost_utils
  raised = multihost_utils.process_allgather(np.int32(flag.name is not None))
  return (flag.name or 'SIGTERM') if np.any(raised) else None


class Run:
  """One run of the loop: the train state and its step, the record, and the periodic pieces (the
  logging window, the checkpoints, the evaluation rounds)."""

  def __init__(self, task: Task, workdir: str, settings: LoopSettings):
    self.task, self.workdir, self.settings = task, workdir, settings
    self.spe, self.total_epochs = settings.steps_per_epoch, settings.epochs
    self.saver = Saver(workdir, settings.keep_checkpoints)
    state, meta = self.saver.restore(task.state)
    self.resumed = state is not None
    self.state = state if self.resumed else task.state
    self.step = int(self.state.step)
    self.record = meta.get('record') or new_record()
    self.train_seconds = float(self.record.get('train_seconds', 0.0))
    self.writer = MetricWriter(workdir)
    if self.resumed:
      log(f'resumed from {checkpoint.checkpoint_dir(workdir)}/{self.step}')
      logged = (self.record['train'] or {}).get('step', 0)
      if self.writer.last_step('train') < logged:
        log(f'notice: metrics.jsonl lacks the rows up to step {logged} (deleted or cut short): '
            'results.json takes its figures from the checkpoint\'s record')
    self.window = Window(self.writer, settings, task.inputs.batch_size, task.schedule, task.monitor, self.record)
    self.rounds = Evaluation(task.evaluators, task.infer, task.eval_inputs or task.inputs, settings.eval_batch_size,
                             settings.epochs, self.writer, self.record)
    self.in_flight = None     # the metrics of the step dispatched before the newest one
    self.n_steps = 0          # steps this run has taken
    self.t_train = time.time()

  def immediate(self):
    """A stretch where the state equals the last checkpoint: a signal stops the run at once
    (one process; several agree at their next sync point instead)."""
    return interrupts.immediate() if jax.process_count() == 1 else contextlib.nullcontext()

  def compile(self, step_fn, example):
    """The AOT-compiled step, with a line before and after that says whether it came from the
    persistent compilation cache (train.compile_cache); each start of the run is recorded (the
    compile's time is not counted in the first window's images/s)."""
    with interrupts.phase('compiling the training step'), self.immediate():
      log('compiling the training step')
      t0, hits = time.time(), compile_cache.hits()
      lowered = step_fn.lower(self.state, *example)
      t1 = time.time()
      compiled = lowered.compile()
      seconds, cached = time.time() - t1, compile_cache.hits() > hits
      log(f'compiled in {seconds:.1f} s' + (' (loaded from the persistent compilation cache)' if cached else '') +
          f', traced in {t1 - t0:.1f} s')
    self.record['compile_seconds'] = seconds  # this start's; 'compiles' keeps every start's
    self.record.setdefault('compiles', []).append({'step': self.step, 'seconds': seconds, 'cached': cached,
                                                   'trace_seconds': t1 - t0})
    self.window.start()
    self.t_train = time.time()
    return compiled

  def after_step(self, metrics) -> bool:
    """The step's metrics into the window, logged when due; True at a sync point (a logging step
    or an epoch end), where processes agree on a stop."""
    if self.in_flight is not None:  # at most two steps queued: a signal stops the run a step or two later
      jax.block_until_ready(self.in_flight)
    self.in_flight = metrics
    self.step += 1
    self.n_steps += 1
    self.window.add(metrics)
    logged = self.window.due(self.step)
    if logged:
      self.window.log(self.step, self.state)
    return logged or self.step % self.spe == 0

  def check_finite(self) -> None:
    first = int(self.state.first_nonfinite_step)
    if first >= 0 and not self.settings.skip_nonfinite:
      raise NonFiniteError(f'non-finite loss or gradient at step {first}: the update was not applied '
                           'and the last good checkpoint is kept; lower learning_rate, use '
                           'dtype=float32, or set --config.skip_nonfinite=True to skip such steps')

  def save(self) -> None:
    """Checkpoints the current step, with the record so far."""
    self.check_finite()
    if self.n_steps:  # the time since the compile, when this run trained at all
      self.record['train_seconds'] = self.train_seconds + time.time() - self.t_train
    meta = {**self.task.meta, **self.settings.meta, 'step': self.step, 'steps_per_epoch': self.spe,
            'record': self.record, 'train_seconds': self.record['train_seconds']}
    self.window.pause(self.saver.save(self.state, self.step, meta))  # the window's rate counts training only

  def evaluate(self, epoch: int) -> None:
    self.window.pause(self.rounds.run(epoch, self.step, self.state.variables, self.window.epoch_means(),
                                      self.immediate))

  def end_epoch(self, flag) -> None:
    """At an epoch end: the finiteness check, then a checkpoint and the evaluation round when
    either is due (the last epoch's are left to finish())."""
    epoch = self.step // self.spe
    self.check_finite()
    if epoch == self.total_epochs:
      return
    due = self.rounds.due(epoch)
    if due or itstime(epoch, self.settings.checkpoint_every_epochs, self.total_epochs):
      self.save()
      self.stop_if(flag, True)
    if due:
      self.evaluate(epoch)
      self.save()
    self.window.end_epoch()

  def catch_up(self) -> None:
    """A run resumed at an epoch end whose evaluation round did not complete runs it first."""
    epoch = self.step // self.spe
    if (self.resumed and self.step % self.spe == 0 and self.record['evaluated_epoch'] < epoch < self.total_epochs
        and self.rounds.due(epoch)):
      self.evaluate(epoch)
      self.save()

  def finish(self, flag) -> None:
    """After the last step: the final checkpoint, then the final evaluation round."""
    if self.saver.saved_step != self.step:
      self.save()
      self.stop_if(flag, True)
    if self.record['evaluated_epoch'] < self.total_epochs:
      self.evaluate(self.total_epochs)
    if self.record['final_step'] != self.step:
      self.record['final_step'] = self.step
      self.save()

  def stop_if(self, flag, sync: bool) -> None:
    """Saves and raises Preempted when a signal asks the run to stop here."""
    name = _stop_requested(flag, sync)
    if name:
      if self.saver.saved_step != self.step:
        self.save()
      raise Preempted(f'{name} at step {self.step}: checkpoint saved in '
                      f'{checkpoint.checkpoint_dir(self.workdir)}; rerun the same command to resume')

  def results(self) -> dict:
    rates = self.record['rates'] or self.record['first_rates']
    facts = {'epochs': self.total_epochs, 'steps': self.step, 'train_seconds': self.record['train_seconds'],
             'compile_seconds': self.record.get('compile_seconds'), 'compiles': self.record.get('compiles', []),
             'images_per_second': float(np.median(rates)) if rates else None,
             'nonfinite_steps': int(self.state.nonfinite_count), **self.task.notes}
    return write_results(self.workdir, self.task.summarize(self.record, facts))

  def close(self) -> None:
    self.writer.close()
    self.task.inputs.close()  # the streamed path's worker processes and shared memory
    self.saver.close()


def run(task: Task, workdir: str, settings: LoopSettings) -> dict:
  """Trains to settings.total_steps from workdir's newest checkpoint (or task.state); evaluates,
  checkpoints and logs on the way; returns results.json's dict."""
  progress = Run(task, workdir, settings)
  try:
    with interrupts.deferred() as flag:
      progress.catch_up()
      batches = task.inputs.batches(progress.step, settings.total_steps)
      first = next(batches, None)
      if first is not None:
        step_fn = progress.compile(task.inputs.bind(task.step_fn), first[1])
        for _, args in itertools.chain([first], batches):
          progress.state, metrics = step_fn(progress.state, *args)
          sync = progress.after_step(metrics)
          progress.stop_if(flag, sync)
          if progress.step % progress.spe == 0:
            progress.end_epoch(flag)
      progress.finish(flag)
  finally:
    progress.close()
  return progress.results()
