"""The logging window of the training loop: the sums of the step metrics since the last progress
line and since the epoch began, the images/s of each window, the progress line and metrics row.

    window = Window(writer, settings, batch_size, schedule, monitor, record)
    window.start()                       # after the compile: the clock starts
    window.add(metrics)                  # each step's metrics (device arrays, summed on the device)
    if window.due(step): window.log(step, state)
    window.pause(seconds)                # time that was not training (a save, an evaluation)
    window.epoch_means(), window.end_epoch()

The first window after a start (compile warm-up, caches) keeps its rate apart in the record's
'first_rates'; the others go to 'rates', whose median is results.json's images_per_second.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from simclr_jax.core.log import format_eta, log
from simclr_jax.core.periodic import itstime

accumulate = jax.jit(lambda window, epoch, metrics: (
    jax.tree.map(jnp.add, window, metrics), jax.tree.map(jnp.add, epoch, metrics)))


class Window:

  def __init__(self, writer, settings, batch_size: int, schedule, monitor, record: dict):
    self.writer, self.settings, self.batch_size = writer, settings, batch_size
    self.schedule, self.monitor, self.record = schedule, monitor, record
    self.sums = self.epoch_sums = None
    self.n = self.epoch_n = 0
    self.first = True
    self.t0 = time.time()

  def start(self) -> None:
    self.t0 = time.time()

  def pause(self, seconds: float) -> None:
    """Leaves `seconds` of the current window out of its rate."""
    self.t0 += seconds

  def add(self, metrics) -> None:
    if self.sums is None or self.epoch_sums is None:
      zeros = jax.tree.map(jnp.zeros_like, metrics)
      self.sums = zeros if self.sums is None else self.sums
      self.epoch_sums = zeros if self.epoch_sums is None else self.epoch_sums
    self.sums, self.epoch_sums = accumulate(self.sums, self.epoch_sums, metrics)
    self.n += 1
    self.epoch_n += 1

  def due(self, step: int) -> bool:
    """Every log_every_steps steps, at the last step, or (one process) after log_every_seconds."""
    by_steps = itstime(step, self.settings.log_every_steps, self.settings.total_steps)
    by_time = jax.process_count() == 1 and time.time() - self.t0 >= self.settings.log_every_seconds
    return by_steps or by_time

  def log(self, step: int, state) -> None:
    """The window's means (and the monitor's figures of the state) as a metrics row, the record's
    last training scalars and a progress line."""
    scalars = {k: float(v) / self.n for k, v in self.sums.items()}
    elapsed = time.time() - self.t0  # the window's steps, not the monitor (nor its compile)
    if self.monitor is not None:
      scalars.update(self.monitor(state))
    rate = self.n * self.batch_size / max(elapsed, 1e-9)
    self.record['first_rates' if self.first else 'rates'].append(rate)
    self.first = False
    lr = float(self.schedule(step)) if self.schedule else float('nan')
    self.writer.write('train', step, {**scalars, 'learning_rate': lr, 'images_per_second': rate})
    self.record['train'] = {'step': step, **scalars}
    total, spe = self.settings.total_steps, self.settings.steps_per_epoch
    eta = (total - step) * elapsed / self.n
    shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items())
    log(f'epoch {-(-step // spe)}/{self.settings.epochs} step {step}/{total} {shown} '
        f'lr {lr:.4g} {rate:,.0f} img/s eta {format_eta(eta)}')
    self.sums, self.n, self.t0 = None, 0, time.time()

  def epoch_means(self) -> dict:
    """{'train_<metric>': mean over the epoch's steps so far}."""
    if self.epoch_sums is None or not self.epoch_n:
      return {}
    return {f'train_{k}': float(v) / self.epoch_n for k, v in self.epoch_sums.items()}

  def end_epoch(self) -> None:
    self.epoch_sums, self.epoch_n = None, 0
