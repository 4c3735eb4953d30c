"""Faults for real: SIGKILL during a step and during a save, SIGTERM, and a NaN loss."""
import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import cli_args, error_line, ROOT, run_cli, shared_run
from simclr_jax.train import checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LONG = {'train_limit': 512, 'epochs': 3, 'log_every_steps': 2, 'evals.knn.every_epochs': 0,
        'checkpoint_every_epochs': 1}


def _final(workdir):
  step_dir = checkpoint.find_checkpoint(str(workdir))
  tree = checkpoint._read_numpy_subtrees(os.path.join(step_dir, 'state'), ('params', 'batch_stats', 'opt_state'))
  return int(os.path.basename(step_dir)), tree


def _assert_same_final(a, b):
  (sa, ta), (sb, tb) = _final(a), _final(b)
  assert sa == sb
  for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb)):
    np.testing.assert_array_equal(x, y)


def _train_steps(workdir):
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass
  return [r['step'] for r in rows if r['kind'] == 'train']


def _start(workdir, **fields):
  return subprocess.Popen(cli_args('pretrain', workdir, **{**LONG, **fields}), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=300, poll=0.005):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  return False


@pytest.fixture(scope='session')
def straight():
  """The uninterrupted run every fault is compared with, made once for the session (all xdist
  workers); tests read it or work on a copy."""
  workdir = shared_run('reliability_straight', 'pretrain', **LONG)[1]
  assert _train_steps(workdir)[-1] == 24  # it trained all 3 epochs of 8 steps
  return workdir


def test_sigkill_during_a_step_resumes_to_identical_parameters(straight, tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(workdir)
  assert _wait_for(lambda: any(s >= 10 for s in _train_steps(workdir)), proc), 'run ended before the kill'
  proc.kill()
  proc.wait()
  steps_before = _train_steps(workdir)
  rerun = run_cli('pretrain', workdir, **LONG)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'resumed from' in rerun.stdout
  _assert_same_final(straight, workdir)
  steps = _train_steps(workdir)
  assert steps[:len(steps_before)] == steps_before and len(steps) == len(set(steps))
  assert steps == _train_steps(straight)


def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(straight, tmp_path):
  """SIGKILL after checkpoint 16's files are written into Orbax's temporary folder, before the
  rename that completes it (tests/kill_during_save.py): the rerun resumes from checkpoint 8."""
  workdir = tmp_path / 'run'
  args = cli_args('pretrain', workdir, **LONG)
  proc = subprocess.run([args[0], os.path.join(ROOT, 'tests', 'kill_during_save.py'), '16'] + args[3:],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  leftovers = sorted(os.listdir(workdir / 'checkpoints'))
  assert '8' in leftovers and '16' not in leftovers and any('tmp' in n for n in leftovers), leftovers
  rerun = run_cli('pretrain', workdir, **LONG)
  assert rerun.returncode == 0, (leftovers, rerun.stderr[-3000:])
  assert f'resumed from {workdir}/checkpoints/8' in rerun.stdout
  _assert_same_final(straight, workdir)


def test_half_written_checkpoint_folder_is_ignored(straight, tmp_path):
  """What a kill mid-save leaves (a temporary folder with part of the files) never counts as a checkpoint."""
  import shutil
  workdir = tmp_path / 'run'
  shutil.copytree(straight, workdir)
  folder = workdir / 'checkpoints'
  latest = max(int(n) for n in os.listdir(folder) if n.isdigit())
  partial = folder / f'{latest + 8}.orbax-checkpoint-tmp-123'
  shutil.copytree(folder / str(latest), partial)
  for f in list((partial / 'state').iterdir())[:2]:
    shutil.rmtree(f) if f.is_dir() else f.unlink()
  assert checkpoint.find_checkpoint(str(workdir)).endswith(f'/{latest}')
  rerun = run_cli('pretrain', workdir, **LONG)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  _assert_same_final(straight, workdir)


def test_sigterm_checkpoints_and_exits_75_then_resumes(straight, tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(workdir)
  assert _wait_for(lambda: any(s >= 6 for s in _train_steps(workdir)), proc), 'run ended before SIGTERM'
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-3000:]
  assert 'preempted: SIGTERM at step' in err and 'rerun the same command' in err
  saved = int(err.split('SIGTERM at step ')[1].split(':')[0])
  assert os.path.isdir(workdir / 'checkpoints' / str(saved))
  before = (workdir / 'metrics.jsonl').read_text()
  rerun = run_cli('pretrain', workdir, **LONG)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'resumed from {workdir}/checkpoints/{saved}' in rerun.stdout
  assert (workdir / 'metrics.jsonl').read_text().startswith(before)  # appended, not truncated
  steps = _train_steps(workdir)
  assert len(steps) == len(set(steps)) and steps == _train_steps(straight)
  _assert_same_final(straight, workdir)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_cli('pretrain', workdir, **{**LONG, 'inject_nan_at_step': 13})
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert 'non-finite loss or gradient at step 13' in error_line(proc)
  assert sorted(int(n) for n in os.listdir(workdir / 'checkpoints')) == [8]
  step, tree = _final(workdir)
  assert step == 8 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


def test_skip_nonfinite_counts_skipped_steps_and_finishes(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_cli('pretrain', workdir, **{**LONG, 'inject_nan_at_step': 13, 'skip_nonfinite': True})
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['nonfinite_steps'] == 1 and np.isfinite(results['final_loss'])
