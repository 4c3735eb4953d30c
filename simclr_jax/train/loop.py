"""The training step shared by every stage, and the step-indexed loop around it (resume, logs,
evaluators, checkpoints, signals).

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
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from simclr_jax.train import checkpoint, compile_cache
from simclr_jax.core import interrupts
from simclr_jax.train import optim
from simclr_jax.core.errors import NonFiniteError, Preempted
from simclr_jax.evals import EvalContext
from simclr_jax.core.log import format_eta, log, plural
from simclr_jax.train.metric_writer import MetricWriter, write_results
from simclr_jax.core.periodic import itstime


class TrainState(struct.PyTreeNode):
  """Everything a step reads and writes; a checkpoint saves it whole. method_state holds what a
  method keeps beyond params and optimiser (an EMA target network, a teacher's variables)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array
  nonfinite_count: jax.Array
  first_nonfinite_step: jax.Array
  method_state: Any = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, params, batch_stats, tx: optax.GradientTransformation, seed: int,
             method_state=None) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), key=jax.random.PRNGKey(seed),
               nonfinite_count=jnp.zeros((), jnp.int32), first_nonfinite_step=-jnp.ones((), jnp.int32),
               method_state=method_state or {})

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(loss_fn: Callable, make_views: Callable, tx: optax.GradientTransformation,
                    update: Callable | None = None, inject_nan_at_step: int = -1) -> Callable:
  """step(state, images_uint8, labels) -> (state, metrics), to be bound to an input path.

  It makes the inputs (augmented views) from a key folded with the step, takes one optimiser
  step, runs the method's update hook (update(method_state, params, step) -> method_state: the
  EMA of a target network), and leaves the state unchanged (counting the step) when the
  objective or a gradient is not finite. loss_fn(params, batch_stats, method_state, inputs,
  labels, step) -> (objective, (batch_stats, method_state, metrics)), metrics holding 'loss'.
  """
  def step_fn(state: TrainState, images, labels):
    inputs = make_views(jax.random.fold_in(state.key, state.step), images)

    def objective(params):
      value, aux = loss_fn(params, state.batch_stats, state.method_state, inputs, labels, state.step)
      if inject_nan_at_step >= 0:
        value = jnp.where(state.step == inject_nan_at_step, jnp.nan, value)
      return value, aux

    (value, (new_stats, method_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if update is not None:
      method_state = update(method_state, params, state.step)
    updated = state.replace(params=params, batch_stats=new_stats, opt_state=new_opt,
                            method_state=method_state)
    finite = jnp.isfinite(value) & _all_finite(grads)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    new_state = new_state.replace(
        step=state.step + 1, nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                       state.first_nonfinite_step))
    if inject_nan_at_step >= 0:
      metrics = {**metrics, 'loss': jnp.where(state.step == inject_nan_at_step, jnp.nan, metrics['loss'])}
    return new_state, metrics

  return step_fn


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


accumulate = jax.jit(lambda window, epoch, metrics: (
    jax.tree.map(jnp.add, window, metrics), jax.tree.map(jnp.add, epoch, metrics)))


class Run:
  """The state of one run of the loop: the train state, the record, the metric sums of the
  logging window and of the epoch, the checkpoint manager and the metrics file."""

  def __init__(self, task: Task, workdir: str, settings: LoopSettings):
    self.task, self.workdir, self.settings = task, workdir, settings
    self.spe, self.total_epochs = settings.steps_per_epoch, settings.epochs
    self.manager = checkpoint.make_manager(workdir, keep=settings.keep_checkpoints)
    state, meta = checkpoint.restore_latest(self.manager, task.state)
    self.resumed = state is not None
    if self.resumed:  # the schedule follows the config, whose epochs may have grown
      state = state.replace(opt_state=optim.with_schedule_of(state.opt_state, task.state.opt_state))
    self.state, meta = (state, meta) if self.resumed else (task.state, {})
    self.step = int(self.state.step)
    self.saved_step = self.step if self.resumed else None
    self.record = meta.get('record') or new_record()
    self.train_seconds = float(self.record.get('train_seconds', 0.0))
    self.writer = MetricWriter(workdir)
    if self.resumed:
      log(f'resumed from {checkpoint.checkpoint_dir(workdir)}/{self.step}')
      logged = (self.record['train'] or {}).get('step', 0)
      if self.writer.last_step('train') < logged:
        log(f'notice: metrics.jsonl lacks the rows up to step {logged} (deleted or cut short): '
            'results.json takes its figures from the checkpoint\'s record')
    self.sums = self.epoch_sums = None
    self.n_window = self.epoch_n = 0
    self.first_window = True  # its rate (the first steps after a start) is kept apart
    self.in_flight = None     # the metrics of the step dispatched before the newest one
    self.n_steps = 0          # steps this run has taken
    self.t_window = self.t_train = time.time()
    interrupts.set_resume_hint(self._resume_hint())

  def _resume_hint(self) -> str:
    if self.saved_step is None:
      return 'nothing was saved yet; rerun the same command to start again'
    return f'checkpoint {self.saved_step} is kept; rerun the same command to resume from it'

  def immediate(self):
    """A stretch where the state equals the last checkpoint: a signal stops the run at once
    (one process; several agree at their next sync point instead)."""
    return interrupts.immediate() if jax.process_count() == 1 else contextlib.nullcontext()

  def compile(self, step_fn, example):
    """The AOT-compiled step, with a line before and after that says whether it came from the
    persistent compilation cache (simclr_jax.train.compile_cache); each start of the run is recorded
    (the compile's time is not counted in the first window's images/s)."""
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
    self.t_window = self.t_train = time.time()
    return compiled

  def after_step(self, metrics) -> bool:
    """Adds the step's metrics to the sums and logs when due; True at a sync point (a logging
    step or an epoch end), where processes agree on a stop."""
    if self.in_flight is not None:  # at most two steps queued: a signal stops the run a step or two later
      jax.block_until_ready(self.in_flight)
    self.in_flight = metrics
    self.step += 1
    self.n_steps += 1
    if self.sums is None or self.epoch_sums is None:
      zeros = jax.tree.map(jnp.zeros_like, metrics)
      self.sums = zeros if self.sums is None else self.sums
      self.epoch_sums = zeros if self.epoch_sums is None else self.epoch_sums
    self.sums, self.epoch_sums = accumulate(self.sums, self.epoch_sums, metrics)
    self.n_window += 1
    self.epoch_n += 1
    by_steps = itstime(self.step, self.settings.log_every_steps, self.settings.total_steps)
    by_time = jax.process_count() == 1 and time.time() - self.t_window >= self.settings.log_every_seconds
    if by_steps or by_time:
      self._log_window()
    return by_steps or self.step % self.spe == 0

  def _log_window(self) -> None:
    scalars = {k: float(v) / self.n_window for k, v in self.sums.items()}
    elapsed = time.time() - self.t_window  # the window's steps, not the monitor (nor its compile)
    if self.task.monitor is not None:
      scalars.update(self.task.monitor(self.state))
    rate = self.n_window * self.task.inputs.batch_size / max(elapsed, 1e-9)
    self.record['first_rates' if self.first_window else 'rates'].append(rate)
    self.first_window = False
    lr = float(self.task.schedule(self.step)) if self.task.schedule else float('nan')
    self.writer.write('train', self.step, {**scalars, 'learning_rate': lr, 'images_per_second': rate})
    self.record['train'] = {'step': self.step, **scalars}
    total = self.settings.total_steps
    eta = (total - self.step) * elapsed / self.n_window
    shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items())
    log(f'epoch {-(-self.step // self.spe)}/{self.total_epochs} step {self.step}/{total} {shown} '
        f'lr {lr:.4g} {rate:,.0f} img/s eta {format_eta(eta)}')
    self.sums, self.n_window, self.t_window = None, 0, time.time()

  def check_finite(self) -> None:
    first = int(self.state.first_nonfinite_step)
    if first >= 0 and not self.settings.skip_nonfinite:
      raise NonFiniteError(f'non-finite loss or gradient at step {first}: the update was not applied '
                           'and the last good checkpoint is kept; lower learning_rate, use '
                           'dtype=float32, or set --config.skip_nonfinite=True to skip such steps')

  def save(self) -> None:
    """Checkpoints the current step (its meta only, when that step is saved already)."""
    self.check_finite()
    if self.n_steps:  # the time since the compile, when this run trained at all
      self.record['train_seconds'] = self.train_seconds + time.time() - self.t_train
    meta = {**self.task.meta, **self.settings.meta, 'step': self.step, 'steps_per_epoch': self.spe, 'record': self.record,
            'train_seconds': self.record['train_seconds']}
    t0 = time.time()
    with interrupts.phase('saving a checkpoint'):
      if self.step in checkpoint.list_steps(self.workdir):  # resumed at this step: the state is the same
        checkpoint.update_meta(self.manager, self.step, meta)
      else:
        checkpoint.save(self.manager, self.step, self.state, meta)
    self.t_window += time.time() - t0  # the logging window's rate counts training only
    self.saved_step = self.step
    interrupts.set_resume_hint(self._resume_hint())

  def due(self, epoch: int) -> list:
    return [e for e in self.task.evaluators
            if not e.skipped and itstime(epoch, e.every_epochs, self.total_epochs)]

  def evaluate(self, epoch: int) -> None:
    """The evaluators due at this epoch end, on a state just saved; a signal stops it at once."""
    due = self.due(epoch)
    if due:  # (with the means of the epoch's training scalars)
      t0 = time.time()
      # The phase first: a signal that came just before is then named by what it stops.
      with interrupts.phase(f'evaluating (epoch {epoch})'), self.immediate():
        log(f'evaluating (epoch {epoch}): {", ".join(e.name for e in due)}')
        ctx = EvalContext(self.task.infer, self.state.variables, self.task.eval_inputs or self.task.inputs,
                          self.settings.eval_batch_size)
        scalars = {}
        for evaluator in due:
          scalars.update(evaluator(ctx))
      if self.epoch_sums is not None and self.epoch_n:
        scalars.update({f'train_{k}': float(v) / self.epoch_n for k, v in self.epoch_sums.items()})
      self.t_window += time.time() - t0  # the logging window's rate counts training only
      self.writer.write('eval', self.step, {'epoch': epoch, **scalars})
      self.record['evals'].append({'step': self.step, 'epoch': epoch, **scalars})
      log(f'epoch {epoch} ' + ' '.join(f'{k} {v:.4g}' for k, v in scalars.items() if isinstance(v, float)))
    self.record['evaluated_epoch'] = epoch

  def end_epoch(self, flag) -> None:
    """At an epoch end: the finiteness check, then a checkpoint and the evaluation round when
    either is due (the last epoch's are left to finish())."""
    epoch = self.step // self.spe
    self.check_finite()
    if epoch == self.total_epochs:
      return
    due = self.due(epoch)
    if due or itstime(epoch, self.settings.checkpoint_every_epochs, self.total_epochs):
      self.save()
      self.stop_if(flag, True)
    if due:
      self.evaluate(epoch)
      self.save()
    self.epoch_sums, self.epoch_n = None, 0

  def catch_up(self) -> None:
    """A run resumed at an epoch end whose evaluation round did not complete runs it first."""
    epoch = self.step // self.spe
    if (self.resumed and self.step % self.spe == 0 and self.record['evaluated_epoch'] < epoch < self.total_epochs
        and self.due(epoch)):
      self.evaluate(epoch)
      self.save()

  def finish(self, flag) -> None:
    """After the last step: the final checkpoint, then the final evaluation round."""
    if self.saved_step != self.step:
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
      if self.saved_step != self.step:
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
    self.manager.close()


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
