"""A run's scalars in workdir/metrics.jsonl and TensorBoard event files, and its results.json.

    writer = MetricWriter(workdir)
    writer.write('train', step, {'loss': 1.2})
    write_results(workdir, {'knn_top1': 0.9})

Resuming appends: rows for steps already in the file are not written again.
"""
from __future__ import annotations

import json
import os
import sys

import jax



def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter for logdir, or None without tensorboardX. Where torch is
  installed, tensorboardX imports it (2.6 s of every run's start) only to recognise torch tensors;
  the writer here logs Python floats, so torch is hidden from that import."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  finally:
    if hide:
      del sys.modules['torch']
  return SummaryWriter(logdir)


class MetricWriter:
  def __init__(self, workdir: str):
    self.primary = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._last = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except ValueError:
            continue  # a line cut short by a kill
          self._last[row['kind']] = max(self._last.get(row['kind'], -1), row['step'])
    self._file = open(self.path, 'a') if self.primary else None
    self._tb = _summary_writer(os.path.join(workdir, 'tensorboard')) if self.primary else None

  def write(self, kind: str, step: int, scalars: dict) -> None:
    if step <= self._last.get(kind, -1):
      return
    row = {'kind': kind, 'step': int(step), **{k: _plain(v) for k, v in scalars.items()}}
    self._last[kind] = step
    if self.primary:
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()
      if self._tb is not None:
        for k, v in scalars.items():
          if isinstance(v, (int, float)):
            self._tb.add_scalar(f'{kind}/{k}', v, step)

  def last_step(self, kind: str) -> int:
    """The newest step with a row of that kind in the file (0 when none)."""
    return max(self._last.get(kind, 0), 0)

  def close(self) -> None:
    if self._file:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _plain(v):
  try:
    return float(v) if not isinstance(v, (int, str)) else v
  except TypeError:
    return v


def write_results(workdir: str, results: dict) -> dict:
  """Writes workdir/results.json atomically (process 0); returns results (the stage logs its
  summary: stages.runner.summary)."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'results.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(results, f, indent=2)
    os.replace(path + '.tmp', path)
  return results
