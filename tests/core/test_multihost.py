"""Two processes on localhost (jax.distributed, one CPU device each) against one process with two
devices: the same global batch gives the same loss trajectory; only process 0 writes."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import MECHANICS, ROOT, cli_args, device_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 2
TOTAL_STEPS = 4 * EPOCHS  # 256 images, batch 64
# The evaluator across the two processes: kNN at k=200 every epoch (knn20 is the same program at
# another k; the tiny settings leave out the offline probe, MECHANICS the online one).
FIELDS = {'train_limit': 256, 'batch_size': 64, 'epochs': EPOCHS, 'log_every_steps': 1,
          'evals.knn.every_epochs': 0, 'evals.knn20.every_epochs': -1, **MECHANICS}
# The one-process reference gives only its losses.
NO_EVALS = {f'evals.{name}.every_epochs': -1 for name in ('knn', 'knn20', 'linear', 'online_linear')}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['loss'] for r in rows if r['kind'] == 'train']


def _start_two(workdir, **fields):
  port = _free_port()
  env = device_env(1)
  return [subprocess.Popen(cli_args('pretrain', workdir, **{**FIELDS, **fields}) + [
      f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _two_processes(workdir, **fields):
  procs = _start_two(workdir, **fields)
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [o for o, _ in outs]


def test_two_processes_stop_together_resume_and_match_one_process_with_the_same_global_batch(tmp_path):
  """Two processes (one CPU device each) against one process with two devices, on the same global
  batch. SIGTERM to the second process only: both stop at the same step with a checkpoint; the
  rerun resumes from it (Orbax restores across processes) and the whole loss trajectory matches
  the one-process run's; only process 0 logs and writes."""
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  procs = _start_two(multi)
  deadline = time.time() + 600
  while time.time() < deadline and not any(s >= 3 for s in _steps(multi)):
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  errs = [p.communicate(timeout=600)[1] for p in procs]
  assert [p.returncode for p in procs] == [75, 75], [e[-2000:] for e in errs]
  stops = [e.split('preempted: SIGTERM at step ')[1].split(':')[0] for e in errs]
  assert stops[0] == stops[1] and (multi / 'checkpoints' / stops[0]).is_dir(), stops
  assert int(stops[0]) < TOTAL_STEPS, stops

  outs = _two_processes(multi)
  assert f'resumed from {multi}/checkpoints/{stops[0]}' in outs[0]
  assert 'results:' in outs[0] and f'epoch {EPOCHS}/{EPOCHS}' in outs[0]
  assert 'results:' not in outs[1] and 'epoch' not in outs[1]  # only process 0 logs
  results = json.loads((multi / 'results.json').read_text())
  assert results['steps'] == TOTAL_STEPS
  assert 0 <= results['knn_top1'] <= 1, results  # kNN ran across both processes' shares of the splits
  assert str(TOTAL_STEPS) in os.listdir(multi / 'checkpoints')
  assert json.loads((multi / '.lock').read_text())['pid'] > 0  # process 0 held the workdir lock

  env = device_env(2)
  proc = subprocess.run(cli_args('pretrain', single, **{**FIELDS, **NO_EVALS}), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = _losses(multi), _losses(single)
  assert len(a) == len(b) == TOTAL_STEPS
  for x, y in zip(a, b):
    assert abs(x - y) < 5e-3 * abs(y), (a, b)


def _steps(workdir):
  path = workdir / 'metrics.jsonl'
  rows = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass
  return [r['step'] for r in rows if r['kind'] == 'train']
