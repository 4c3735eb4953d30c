"""The training step shared by every stage, and the loop around it (resume, logs, evaluators,
checkpoints, preemption, non-finite guard, results.json).

    state = TrainState.create(params, batch_stats, tx, seed)
    core = make_train_step(loss_fn, make_views, tx)     # (state, images, labels) -> (state, metrics)
    results = run(config, workdir, Task(state, core, inputs, evaluators, infer, summarize))

results.json comes from the record kept in every checkpoint (the last logged training scalars,
every evaluation, the measured images/s and the training time), so a rerun of a finished run,
a deleted metrics.jsonl or a stop after the last step never makes it worse.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from simclr_jax import checkpoint, interrupts, models, workdir as workdir_lib
from simclr_jax.errors import NonFiniteError, Preempted
from simclr_jax.evaluate import EvalContext
from simclr_jax.metrics import MetricWriter, format_eta, log, write_results
from simclr_jax.periodic import itstime


class TrainState(struct.PyTreeNode):
  """Everything a step reads and writes; a checkpoint saves it whole."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array
  nonfinite_count: jax.Array
  first_nonfinite_step: jax.Array

  @classmethod
  def create(cls, params, batch_stats, tx: optax.GradientTransformation, seed: int) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), key=jax.random.PRNGKey(seed),
               nonfinite_count=jnp.zeros((), jnp.int32), first_nonfinite_step=-jnp.ones((), jnp.int32))

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(loss_fn: Callable, make_views: Callable, tx: optax.GradientTransformation,
                    inject_nan_at_step: int = -1) -> Callable:
  """step(state, images_uint8, labels) -> (state, metrics), to be bound to an input path.

  It makes the inputs (augmented views) from a key folded with the step, takes one optimiser
  step, and leaves the state unchanged (counting the step) when the objective or a gradient is
  not finite. loss_fn(params, batch_stats, inputs, labels) -> (objective, (batch_stats, metrics)),
  metrics holding at least 'loss'.
  """
  def step_fn(state: TrainState, images, labels):
    inputs = make_views(jax.random.fold_in(state.key, state.step), images)

    def objective(params):
      value, aux = loss_fn(params, state.batch_stats, inputs, labels)
      if inject_nan_at_step >= 0:
        value = jnp.where(state.step == inject_nan_at_step, jnp.nan, value)
      return value, aux

    (value, (new_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    updated = state.replace(params=optax.apply_updates(state.params, updates),
                            batch_stats=new_stats, opt_state=new_opt)
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
  inputs: Any                       # an input path of simclr_jax.input_pipeline
  evaluators: list                  # simclr_jax.evaluate evaluators, each with every_epochs
  infer: Callable                   # (variables, normalised images) -> dict of outputs, eval mode
  summarize: Callable[[dict, dict], dict]  # (record, run facts) -> results.json
  schedule: Callable | None = None  # step -> learning rate, for the logs
  notes: dict = dataclasses.field(default_factory=dict)  # extra fields for results.json
  eval_inputs: Any = None           # the evaluators' splits (default: inputs)


def log_setup(config) -> None:
  """The first log line: devices and compute dtype."""
  log(f'compute dtype {models.resolve_dtype(config.dtype)} (config.dtype={config.dtype!r}) on '
      f'{jax.device_count()} {jax.devices()[0].platform} device(s)')


def log_model(config, inputs) -> None:
  """The line that says which stem the image size chose."""
  size = inputs.image_shape[0]
  log(f'{config.model} width {config.width:g}, stem {models.resolve_stem(config.stem, size)} '
      f'(config.stem={config.stem!r}, {size} px images), {inputs.num_examples} training images')


def _check_finite(state: TrainState, skip_nonfinite: bool) -> None:
  first = int(state.first_nonfinite_step)
  if first >= 0 and not skip_nonfinite:
    raise NonFiniteError(f'non-finite loss or gradient at step {first}: the update was not applied '
                         'and the last good checkpoint is kept; lower learning_rate, use '
                         'dtype=float32, or set --config.skip_nonfinite=True to skip such steps')


def new_record() -> dict:
  """What a checkpoint remembers of the run so far, for results.json."""
  return {'train': None, 'evals': [], 'rates': [], 'first_rates': [], 'final_step': None,
          'train_seconds': 0.0}


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


def finished_results(config, workdir: str) -> dict | None:
  """results.json of a run in workdir that has trained and evaluated all of config.epochs, with
  a notice; None when there is work left (or results.json is missing)."""
  step_dir = checkpoint.latest_step_dir(workdir)
  path = os.path.join(workdir, 'results.json')
  if step_dir is None or not os.path.exists(path):
    return None
  meta = checkpoint.read_meta(step_dir)
  total = config.epochs * int(meta.get('steps_per_epoch') or -1)
  if meta.get('step') != total or (meta.get('record') or {}).get('final_step') != total:
    return None
  log(f'the run in {workdir} is complete ({config.epochs} epochs, {total} steps): results.json is '
      'kept as it is; pass a larger --config.epochs to train further')
  with open(path) as f:
    return json.load(f)


def run(config, workdir: str, task: Task) -> dict:
  """Trains to config.epochs, resuming from workdir's latest checkpoint; returns results.json's dict."""
  done = finished_results(config, workdir)
  if done is not None:
    return done
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  state, meta = checkpoint.restore_latest(manager, task.state)
  resumed = state is not None
  if not resumed:
    state, meta = task.state, {}
  record = meta.get('record') or new_record()
  inputs = task.inputs
  spe, total_epochs = inputs.steps_per_epoch, config.epochs
  total_steps = spe * total_epochs
  step = int(state.step)
  workdir_lib.check_epochs(workdir, total_epochs, step, spe)
  if resumed:
    log(f'resumed from {checkpoint.checkpoint_dir(workdir)}/{step}')
  writer = MetricWriter(workdir)
  logged = (record['train'] or {}).get('step', 0)
  if resumed and writer.last_step('train') < logged:
    log(f'notice: metrics.jsonl lacks the rows up to step {logged} (deleted or cut short): '
        'results.json takes its figures from the checkpoint\'s record')
  train_seconds = float(meta.get('train_seconds', 0.0))
  config_dict = json.loads(config.to_json())
  step_fn = inputs.bind(task.step_fn)
  t_start = time.time()

  def save(step_now):
    _check_finite(state, config.skip_nonfinite)
    record['train_seconds'] = train_seconds + time.time() - t_start
    meta = {'config': config_dict, 'step': step_now, 'steps_per_epoch': spe, 'record': record,
            'image_shape': list(inputs.image_shape), 'train_seconds': record['train_seconds']}
    if step_now in checkpoint.list_steps(workdir):  # resumed at this step: the state is the same
      checkpoint.update_meta(manager, step_now, meta)
    else:
      checkpoint.save(manager, step_now, state, meta)

  def evaluate(epoch):
    due = [e for e in task.evaluators if itstime(epoch, e.every_epochs, total_epochs)]
    if not due:
      return
    ctx = EvalContext(task.infer, state.variables, task.eval_inputs or inputs, config.eval_batch_size)
    scalars = {}
    for evaluator in due:
      scalars.update(evaluator(ctx))
    if epoch_sums is not None:
      scalars.update({f'train_{k}': float(v) / epoch_n for k, v in epoch_sums.items()})
    writer.write('eval', step, {'epoch': epoch, **scalars})
    record['evals'].append({'step': step, 'epoch': epoch, **scalars})
    log(f'epoch {epoch} ' + ' '.join(f'{k} {v:.4g}' for k, v in scalars.items()
                                     if isinstance(v, float)))

  epoch_sums, epoch_n = None, 0
  try:
    with interrupts.deferred() as flag:
      first_window = True
      for epoch in range(step // spe, total_epochs):
        sums, t_window, n_window = None, time.time(), 0
        epoch_sums, epoch_n = None, 0
        for args in inputs.epoch(epoch, start=step - epoch * spe):
          state, metrics = step_fn(state, *args)
          step += 1
          n_window += 1
          epoch_n += 1
          sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
          epoch_sums = metrics if epoch_sums is None else jax.tree.map(jnp.add, epoch_sums, metrics)
          logging_now = itstime(step, config.log_every_steps, total_steps)
          if logging_now:
            scalars = {k: float(v) / n_window for k, v in sums.items()}
            elapsed = time.time() - t_window
            rate = n_window * config.batch_size / max(elapsed, 1e-9)
            record['first_rates' if first_window else 'rates'].append(rate)
            first_window = False
            lr = float(task.schedule(step)) if task.schedule else float('nan')
            writer.write('train', step, {**scalars, 'learning_rate': lr, 'images_per_second': rate})
            record['train'] = {'step': step, **scalars}
            eta = (total_steps - step) * elapsed / n_window
            shown = ' '.join(f'{k} {v:.4f}' for k, v in scalars.items())
            log(f'epoch {epoch + 1}/{total_epochs} step {step}/{total_steps} {shown} lr {lr:.4g} '
                f'{rate:,.0f} img/s eta {format_eta(eta)}')
            sums, t_window, n_window = None, time.time(), 0
          signalled = _stop_requested(flag, logging_now or step % spe == 0)
          if signalled:
            save(step)
            raise Preempted(f'{signalled} at step {step}: checkpoint saved in '
                            f'{checkpoint.checkpoint_dir(workdir)}; rerun the same command to resume')
        _check_finite(state, config.skip_nonfinite)
        evaluate(epoch + 1)
        if epoch + 1 == total_epochs:
          record['final_step'] = step
        if itstime(epoch + 1, config.checkpoint_every_epochs, total_epochs):
          save(step)
      if record['final_step'] != total_steps:  # resumed after the last step: evaluate, record
        evaluate(total_epochs)
        record['final_step'] = total_steps
        save(step)
  finally:
    writer.close()
    inputs.close()  # the streamed path's worker processes and shared memory
  manager.close()
  rates = record['rates'] or record['first_rates']
  facts = {'epochs': total_epochs, 'steps': step, 'train_seconds': record['train_seconds'],
           'images_per_second': float(np.median(rates)) if rates else None,
           'nonfinite_steps': int(state.nonfinite_count), **task.notes}
  results = task.summarize(record, facts)
  return write_results(workdir, results)
