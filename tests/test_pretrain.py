"""End to end: the CLI on cifar10_jpeg, resume, interrupted-then-resumed equality, and learning."""
import json
import os
import signal

import jax
import numpy as np
import pytest

from conftest import run_cli, tiny_config
from simclr_jax import checkpoint, parallel, pretrain, train_loop
from simclr_jax.errors import Preempted


def test_cli_writes_checkpoints_and_results_then_resumes(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_cli('pretrain', workdir, epochs=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'knn_top1' in proc.stdout and 'img/s' in proc.stdout and 'eta' in proc.stdout
  results = json.loads((workdir / 'results.json').read_text())
  for key in ('epochs', 'steps', 'final_loss', 'knn_top1', 'images_per_second', 'train_seconds'):
    assert results[key] is not None, key
  assert results['epochs'] == 2 and results['steps'] == 16
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['16', '8']
  assert os.listdir(workdir / 'tensorboard')
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if r['kind'] == 'train'] == [4, 8, 12, 16]

  again = run_cli('pretrain', workdir, epochs=3)  # epochs may change on resume
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'resumed from' in again.stdout and 'step 4/24' not in again.stdout
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in rows if r['kind'] == 'train']
  assert steps == [4, 8, 12, 16, 20, 24]
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 24


def _params(workdir):
  manager = checkpoint.make_manager(str(workdir))
  step = manager.latest_step()
  restored = checkpoint._read_numpy_subtrees(os.path.join(str(manager.directory), str(step), 'state'),
                                             ('params', 'batch_stats'))
  return step, restored


def _train(config, workdir, stop_at_step=None):
  mesh = parallel.make_mesh()
  task = pretrain.build_task(config, mesh, train_loop.load_device_data(config, mesh))
  if stop_at_step is not None:
    inner = task.step_fn

    def step_fn(state, *args):
      out = inner(state, *args)
      if int(out[0]['step']) == stop_at_step:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop: checkpoint, then Preempted
      return out
    task.step_fn = step_fn
  return train_loop.run(config, str(workdir), task)


def test_interrupted_then_resumed_run_ends_with_identical_parameters(tmp_path):
  config = tiny_config(epochs=2, knn_every_epochs=2)
  _train(config, tmp_path / 'straight')
  with pytest.raises(Preempted):
    _train(config, tmp_path / 'interrupted', stop_at_step=5)  # mid-epoch
  assert _params(tmp_path / 'interrupted')[0] == 5
  _train(config, tmp_path / 'interrupted')
  (s1, a), (s2, b) = _params(tmp_path / 'straight'), _params(tmp_path / 'interrupted')
  assert s1 == s2 == 16
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  results = [json.loads((tmp_path / d / 'results.json').read_text()) for d in ('straight', 'interrupted')]
  assert results[0]['final_loss'] == results[1]['final_loss']


def test_pretraining_learns_features_that_beat_initialisation(tmp_path):
  """Seen on cifar10_jpeg (2,048 images, width 0.125, 8 epochs): kNN gains of 3.0 to 7.1 points over seeds 0-3 (4.1 with seed 0)."""
  config = tiny_config(train_limit=2048, batch_size=128, epochs=8, learning_rate=0.6, warmup_epochs=1.0,
                       knn_every_epochs=8, log_every_steps=1000, checkpoint_every_epochs=0)
  mesh = parallel.make_mesh()
  task = pretrain.build_task(config, mesh, train_loop.load_device_data(config, mesh))
  before = task.evaluate({'params': task.state['params'], 'batch_stats': task.state['batch_stats']})
  after = train_loop.run(config, str(tmp_path), task)
  assert after['knn_top1'] > before['knn_top1'] + 0.02, (before, after)
