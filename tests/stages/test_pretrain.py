"""End to end: the CLI on cifar10_jpeg, resume, interrupted-then-resumed equality, and learning."""
import json
import time
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import final_params, pretrain_task, run_cli, tiny_config, train_in_process
from simclr_jax.train import checkpoint
from simclr_jax import evals
from simclr_jax.train import loop
from simclr_jax.core.errors import Preempted

pytestmark = pytest.mark.slow


@pytest.mark.e2e
def test_cli_writes_checkpoints_and_results_then_resumes(pretrained_run, tmp_path):
  stdout, original = pretrained_run
  assert 'knn_top1' in stdout and 'img/s' in stdout and 'eta' in stdout
  assert 'compiling the training step' in stdout and 'compiled in' in stdout
  lines = stdout.splitlines()
  compiled_at = next(i for i, l in enumerate(lines) if 'compiled in' in l)
  assert any('step 4/16' in l for l in lines[compiled_at:])  # progress comes after the compile line
  results = json.loads((original / 'results.json').read_text())
  for key in ('epochs', 'steps', 'final_loss', 'knn_top1', 'images_per_second', 'train_seconds',
              'compile_seconds', 'embedding_std', 'embedding_rank'):
    assert results[key] is not None, key
  assert results['epochs'] == 2 and results['steps'] == 16 and results['method'] == 'simclr'
  # Every evaluator's figures, each with its protocol: kNN at k=200 and its second instance at k=20.
  assert results['protocols'] == {'knn_top1': 'knn', 'knn20_top1': 'knn', 'online_linear_top1': 'online'}
  assert results['labels']['knn20_top1'] == 'kNN (k=20)' and results['knn20_history'] == [[2, results['knn20_top1']]]
  assert sorted(os.listdir(original / 'checkpoints')) == ['16', '8']
  events = [f for f in os.listdir(original / 'tensorboard') if f.startswith('events.out.tfevents')]
  assert events and os.path.getsize(original / 'tensorboard' / events[0]) > 1000
  rows = [json.loads(l) for l in (original / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if r['kind'] == 'train'] == [4, 8, 12, 16]
  assert [r['epoch'] for r in rows if r['kind'] == 'eval'] == [1, 2]
  assert all('embedding_rank' in r for r in rows if r['kind'] == 'train')
  assert "compute dtype float32 (config.dtype='float32')" in stdout

  # Rerunning a finished run keeps its results; so does losing metrics.jsonl and results.json.
  workdir = tmp_path / 'run'
  shutil.copytree(original, workdir)
  before = (workdir / 'results.json').read_bytes()
  rerun = run_cli('pretrain', workdir, epochs=2)
  assert rerun.returncode == 0 and 'is complete (2 epochs, 16 steps)' in rerun.stdout, rerun.stderr[-3000:]
  assert (workdir / 'results.json').read_bytes() == before
  lowered = run_cli('pretrain', workdir, epochs=1)
  assert lowered.returncode == 2 and 'config.epochs=1 is below what the run' in lowered.stderr
  assert '(16 steps = 2 epochs)' in lowered.stderr
  assert (workdir / 'results.json').read_bytes() == before
  (workdir / 'metrics.jsonl').unlink()
  (workdir / 'results.json').unlink()
  rebuilt = run_cli('pretrain', workdir, epochs=2)
  assert rebuilt.returncode == 0 and 'notice: metrics.jsonl lacks the rows' in rebuilt.stdout
  again = json.loads((workdir / 'results.json').read_text())
  for key in ('final_loss', 'knn_top1', 'images_per_second', 'train_seconds', 'knn_history', 'steps'):
    assert again[key] == results[key], key

  again = run_cli('pretrain', workdir, epochs=3)  # epochs may change on resume
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'resumed from' in again.stdout and 'step 4/24' not in again.stdout
  # The second process loads the step the first one compiled from the persistent cache (the
  # session's, as a user's is theirs), and results.json records each start's compile.
  loaded = next(l for l in again.stdout.splitlines() if 'compiled in' in l)
  assert '(loaded from the persistent compilation cache), traced in' in loaded, loaded
  compiles = json.loads((workdir / 'results.json').read_text())['compiles']
  assert [c['step'] for c in compiles][-1] == 16 and compiles[-1]['cached'] and compiles[-1]['seconds'] < 3
  assert json.loads((workdir / 'results.json').read_text())['compile_seconds'] == compiles[-1]['seconds']
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in rows if r['kind'] == 'train']
  assert steps == [20, 24]  # the rows of the first two epochs went with the deleted file
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 24


def test_interrupted_then_resumed_run_ends_with_identical_parameters(tmp_path):
  config = tiny_config(epochs=2, **{'evals.knn.every_epochs': 2})
  train_in_process(config, tmp_path / 'straight')
  with pytest.raises(Preempted):
    train_in_process(config, tmp_path / 'interrupted', stop_at_step=5)  # mid-epoch
  # Mid-epoch (8 steps an epoch): the step the signal came before, or the next when the signal's handler ran
  # only after that step was dispatched (the loop keeps up to two steps in flight; seen on a loaded machine).
  assert final_params(tmp_path / 'interrupted')[0] in (5, 6)
  train_in_process(config, tmp_path / 'interrupted')
  (s1, a), (s2, b) = final_params(tmp_path / 'straight'), final_params(tmp_path / 'interrupted')
  assert s1 == s2 == 16
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  results = [json.loads((tmp_path / d / 'results.json').read_text()) for d in ('straight', 'interrupted')]
  assert results[0]['final_loss'] == results[1]['final_loss']


def test_progress_is_logged_every_n_seconds_and_its_rate_leaves_out_the_compile(tmp_path, capsys, monkeypatch):
  """log_every_seconds logs between the log_every_steps steps (here every step), and the first
  line's images/s counts the training only: a 4-second pause just before the compile would
  bring a one-step window of 64 images below 16 img/s if it were counted."""
  from simclr_jax.train import loop as loop_module
  log = loop_module.log

  def slow_log(message):
    if message == 'compiling the training step':
      time.sleep(4.0)
    log(message)
  monkeypatch.setattr(loop_module, 'log', slow_log)
  config = tiny_config(epochs=2, log_every_steps=100, log_every_seconds=0.0, **{'evals.knn.every_epochs': 2})
  train_in_process(config, tmp_path)
  lines = [l for l in capsys.readouterr().out.splitlines() if ' img/s ' in l]
  assert [l.split(' step ')[1].split()[0] for l in lines] == [f'{k}/16' for k in range(1, 17)]
  rates = [float(l.split(' img/s')[0].split()[-1].replace(',', '')) for l in lines]
  assert rates[0] > 16, lines[0]
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if r['kind'] == 'train'] == list(range(1, 17))


def test_pretraining_learns_features_that_beat_initialisation(tmp_path):
  """kNN after 4 epochs on 1,024 cifar10_jpeg images beats the same network at initialisation by
  more than 2 points (a tiny ResNet-10 here, measured: 20.1 -> 26.5; the README's learning check
  measures every method at ResNet-18 width 0.125)."""
  config = tiny_config(train_limit=1024, batch_size=64, epochs=4, learning_rate=0.6, warmup_epochs=1.0,
                       log_every_steps=1000, checkpoint_every_epochs=0,
                       **{'evals.knn.every_epochs': 4, 'evals.linear.every_epochs': -1,
                          'evals.online_linear.every_epochs': -1})
  task, settings = pretrain_task(config)
  knn = evals.KnnEvaluator('knn', config.evals.knn)
  before = knn(evals.EvalContext(task.infer, task.state.variables, task.inputs, 1000))
  after = loop.run(task, str(tmp_path), settings)
  assert after['knn_top1'] > before['knn_top1'] + 0.02, (before, after)


def test_a_stop_at_the_last_step_still_gets_its_final_evaluation(tmp_path):
  config = tiny_config(epochs=1, **{'evals.knn.every_epochs': 0})
  with pytest.raises(Preempted):
    train_in_process(config, tmp_path, stop_at_step=8)  # SIGTERM on the last step: saved before evaluating
  assert checkpoint.list_steps(str(tmp_path)) == [8] and not (tmp_path / 'results.json').exists()
  results = train_in_process(config, tmp_path)
  assert results['knn_top1'] is not None and results['knn_history'] == [[1, results['knn_top1']]]
  assert results['online_linear_top1'] is not None and results['images_per_second'] is not None


def test_runs_differing_in_length_data_size_or_learning_rate_share_one_compiled_step():
  """The schedule's numbers are data in the optimiser's state and the batch is gathered outside
  the step, placed as the streamed path places it, so these runs lower to one program (and
  compile once, through the persistent cache)."""
  def program(**fields):
    task, _ = pretrain_task(tiny_config(**fields))
    text = task.inputs.bind(task.step_fn).lower(task.state, *next(task.inputs.batches(0, 1))[1]).as_text()
    task.inputs.close()
    return text
  base = program()
  assert program(epochs=3, train_limit=256, learning_rate=0.6, warmup_epochs=1.0) == base
  assert program(data_placement='stream', input_workers=1) == base  # the streamed path's batches too
  assert program(batch_size=32) != base  # a batch of another shape is another program
