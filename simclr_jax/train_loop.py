"""The training step shared by every stage, and the loop around it (resume, logs, evaluators,
checkpoints, preemption, non-finite guard).

    step_fn = make_train_step(loss_fn, make_inputs, tx, mesh, batch_size, steps_per_epoch)
    history = run(config, workdir, task)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simclr_jax import checkpoint, data, parallel
from simclr_jax.errors import NonFiniteError, Preempted
from simclr_jax.metrics import MetricWriter, format_eta, log


def init_state(params, batch_stats, tx, seed: int, trainable: str | None = None) -> dict:
  """The whole training state as one pytree; `trainable` names the only params subtree that trains."""
  opt_params = params if trainable is None else params[trainable]
  return {'params': params, 'batch_stats': batch_stats, 'opt_state': tx.init(opt_params),
          'step': jnp.zeros((), jnp.int32), 'key': jax.random.PRNGKey(seed),
          'nonfinite_count': jnp.zeros((), jnp.int32), 'first_nonfinite_step': -jnp.ones((), jnp.int32)}


@functools.partial(jax.jit, static_argnames=('n', 'length'))
def epoch_permutation(key, epoch, n: int, length: int) -> jax.Array:
  """Indices for one epoch: shuffled copies of range(n), enough to cover `length` draws."""
  key = jax.random.fold_in(jax.random.fold_in(key, 1), epoch)
  copies = -(-length // n)
  perms = [jax.random.permutation(k, n) for k in jax.random.split(key, copies)]
  return jnp.concatenate(perms)[:length].astype(jnp.int32)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(loss_fn: Callable, make_inputs: Callable, tx: optax.GradientTransformation,
                    mesh, batch_size: int, steps_per_epoch: int, trainable: str | None = None,
                    skip_nonfinite: bool = False, inject_nan_at_step: int = -1):
  """A jitted step(state, images, labels, perm) -> (state, metrics).

  It gathers the batch from device-resident images by index, makes the inputs (augmented
  views) from a key folded with the step, takes one optimiser step, and leaves the state
  unchanged (recording the step) when the loss or a gradient is not finite.
  loss_fn(params, batch_stats, inputs, labels) -> (loss, (new_batch_stats, metrics)).
  """
  data = parallel.data_sharded(mesh)

  def step_fn(state, images, labels, perm):
    step = state['step']
    start = (step % steps_per_epoch) * batch_size
    idx = jax.lax.with_sharding_constraint(jax.lax.dynamic_slice_in_dim(perm, start, batch_size), data)
    x = jax.lax.with_sharding_constraint(images[idx], data)
    y = labels[idx]
    inputs = make_inputs(jax.random.fold_in(state['key'], step), x)
    params = state['params'] if trainable is None else state['params'][trainable]

    def objective(p):
      full = p if trainable is None else {**state['params'], trainable: p}
      loss, aux = loss_fn(full, state['batch_stats'], inputs, y)
      if inject_nan_at_step >= 0:
        loss = jnp.where(step == inject_nan_at_step, jnp.nan, loss)
      return loss, aux

    (loss, (new_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, new_opt = tx.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    if trainable is not None:
      new_params = {**state['params'], trainable: new_params}
    finite = jnp.isfinite(loss) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {
        'params': keep(new_params, state['params']),
        'batch_stats': keep(new_stats, state['batch_stats']),
        'opt_state': keep(new_opt, state['opt_state']),
        'step': step + 1, 'key': state['key'],
        'nonfinite_count': state['nonfinite_count'] + (~finite).astype(jnp.int32),
        'first_nonfinite_step': jnp.where((state['first_nonfinite_step'] < 0) & ~finite, step,
                                          state['first_nonfinite_step']),
    }
    return new_state, {'loss': loss, **metrics}

  return jax.jit(step_fn, donate_argnums=(0,))


@dataclasses.dataclass
class Task:
  """What the loop needs from a stage."""
  state: Any                        # initial state (replicated on the mesh)
  step_fn: Callable                 # from make_train_step
  images: jax.Array                 # device-resident uint8 training images
  labels: jax.Array
  steps_per_epoch: int
  evaluate: Callable[[dict], dict]  # variables -> scalars
  eval_every_epochs: int
  summarize: Callable[[MetricWriter, dict], dict]  # (writer, run facts) -> results.json
  schedule: Callable | None = None  # step -> learning rate, for the logs


class _PreemptionFlag:
  """Turns SIGTERM and SIGINT into a flag checked between steps."""

  def __init__(self):
    self.raised = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    self.raised = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _check_finite(state, config) -> None:
  first = int(state['first_nonfinite_step'])
  if first >= 0 and not config.skip_nonfinite:
    raise NonFiniteError(f'non-finite loss or gradient at step {first}: the update was not applied '
                         'and the last good checkpoint is kept; lower learning_rate, use '
                         'dtype=float32, or set --config.skip_nonfinite=True to skip such steps')


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """Both splits resident on every device: uint8 images, int32 labels."""
  num_classes: int
  train_images: jax.Array
  train_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array


def load_device_data(config, mesh, label_fraction: float = 1.0) -> DeviceData:
  """Loads the dataset once and places it, replicated, on the mesh's devices."""
  ds = data.load_dataset(config.dataset, config.data_dir, config.train_limit)
  train_x, train_y = ds.train_images, ds.train_labels
  if label_fraction < 1.0:
    keep = data.balanced_subset(train_y, label_fraction, ds.num_classes, config.label_seed)
    train_x, train_y = train_x[keep], train_y[keep]
  arrays = parallel.put_replicated((train_x, train_y, ds.test_images, ds.test_labels), mesh)
  return DeviceData(ds.num_classes, *arrays)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch; at least one (a small labelled subset is drawn from repeatedly)."""
  return max(1, num_examples // batch_size)


def _variables(state) -> dict:
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


def run(config, workdir: str, task: Task) -> dict:
  """Trains to config.epochs, resuming from workdir's latest checkpoint; returns results.json's dict."""
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  state, meta = checkpoint.restore_latest(manager, task.state)
  if state is None:
    state, meta = task.state, {'train_seconds': 0.0}
  else:
    log(f'resumed from {checkpoint.checkpoint_dir(workdir)}/{int(state["step"])}')
  writer = MetricWriter(workdir)
  spe, total_epochs = task.steps_per_epoch, config.epochs
  total_steps = spe * total_epochs
  step = int(state['step'])
  train_seconds = float(meta.get('train_seconds', 0.0))
  config_dict = json.loads(config.to_json())

  def save(step_now):
    _check_finite(state, config)
    checkpoint.save(manager, step_now, state, {'config': config_dict, 'step': step_now,
                                               'train_seconds': train_seconds + time.time() - t_start})

  rates = []  # images/s of each logging window; the first one includes compilation
  try:
    with _PreemptionFlag() as preempt:
      t_start = time.time()
      for epoch in range(step // spe, total_epochs):
        perm = epoch_permutation(state['key'], epoch, task.images.shape[0], spe * config.batch_size)
        sums, t_window, n_window = None, time.time(), 0
        epoch_sums, epoch_n = None, 0
        for _ in range(step - epoch * spe, spe):
          state, metrics = task.step_fn(state, task.images, task.labels, perm)
          step += 1
          n_window += 1
          sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
          epoch_sums = metrics if epoch_sums is None else jax.tree.map(jnp.add, epoch_sums, metrics)
          epoch_n += 1
          if step % config.log_every_steps == 0 or step == (epoch + 1) * spe:
            scalars = {k: float(v) / n_window for k, v in sums.items()}
            elapsed = time.time() - t_window
            images_per_second = n_window * config.batch_size / max(elapsed, 1e-9)
            rates.append(images_per_second)
            lr = float(task.schedule(step)) if task.schedule else float('nan')
            writer.write('train', step, {**scalars, 'learning_rate': lr, 'images_per_second': images_per_second})
            eta = (total_steps - step) * elapsed / n_window
            shown = ' '.join(f'{k} {v:.4f}' for k, v in scalars.items())
            log(f'epoch {epoch + 1}/{total_epochs} step {step}/{total_steps} {shown} lr {lr:.4g} '
                f'{images_per_second:,.0f} img/s eta {format_eta(eta)}')
            sums, t_window, n_window = None, time.time(), 0
          if preempt.raised:
            save(step)
            raise Preempted(f'{preempt.raised} at step {step}: checkpoint saved in '
                            f'{checkpoint.checkpoint_dir(workdir)}; rerun the same command to resume')
        _check_finite(state, config)
        last = epoch + 1 == total_epochs
        if last or (task.eval_every_epochs and (epoch + 1) % task.eval_every_epochs == 0):
          scalars = task.evaluate(_variables(state))
          if epoch_sums is not None:
            scalars.update({f'train_{k}': float(v) / epoch_n for k, v in epoch_sums.items()})
          writer.write('eval', step, {'epoch': epoch + 1, **scalars})
          log(f'epoch {epoch + 1} ' + ' '.join(f'{k} {v:.4f}' for k, v in scalars.items()))
        if last or (config.checkpoint_every_epochs and (epoch + 1) % config.checkpoint_every_epochs == 0):
          save(step)
      train_seconds += time.time() - t_start
  except BaseException:  # preempted, non-finite or interrupted: finish the save, flush the logs
    manager.wait_until_finished()
    writer.close()
    raise
  manager.wait_until_finished()
  facts = {'epochs': total_epochs, 'steps': step, 'train_seconds': train_seconds,
           'images_per_second': float(np.median(rates[1:] or rates)) if rates else None,
           'nonfinite_steps': int(state['nonfinite_count'])}
  results = task.summarize(writer, facts)
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  manager.close()
  log(f'results: {json.dumps(results)}')
  return results

