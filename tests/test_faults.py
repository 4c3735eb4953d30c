"""Faults beyond kills and NaNs: a workdir in use, a full or read-only disk, signals outside the
training loop, stale caches, and the notices for odd sizes."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import DATA_DIR, DATASET, ROOT, cli_args, error_line, run_cli
from simclr_jax import data, input_pipeline, workdir as workdir_lib
from simclr_jax.errors import ConfigError

HOLD_LOCK = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from simclr_jax import workdir
    workdir.acquire_lock(sys.argv[1])
    print('locked', flush=True)
    time.sleep(600)
''')


def _hold_lock(folder):
  proc = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(folder), ROOT], stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def test_a_workdir_in_use_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path):
  holder = _hold_lock(tmp_path)
  try:
    with pytest.raises(ConfigError, match=rf'is in use by another run \(pid {holder.pid} on .*, started '):
      workdir_lib.acquire_lock(str(tmp_path))
  finally:
    holder.kill()
    holder.wait()
  assert (tmp_path / workdir_lib.LOCK_NAME).exists()  # the killed run's lock file is left behind
  workdir_lib.acquire_lock(str(tmp_path))  # but it does not block the rerun
  workdir_lib.release_lock(str(tmp_path))


def test_a_second_cli_run_on_a_workdir_in_use_refuses_at_once(tmp_path):
  (tmp_path / 'w').mkdir()
  holder = _hold_lock(tmp_path / 'w')
  try:
    before = sorted(os.listdir(tmp_path / 'w'))
    proc = run_cli('pretrain', tmp_path / 'w')
    assert proc.returncode == 2 and f'(pid {holder.pid} on' in error_line(proc), proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / 'w')) == before  # no config.json written
  finally:
    holder.kill()
    holder.wait()


def _unshare_available(tmp_path):
  if not shutil.which('unshare'):
    return 'unshare (util-linux) is not installed'
  point = tmp_path / 'probe'
  point.mkdir()
  probe = subprocess.run(['unshare', '-rm', 'sh', '-c', f'mount -t tmpfs -o size=1m tmpfs {point}'],
                         capture_output=True, text=True)
  if probe.returncode != 0:
    return f'cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()[:200]}'
  return ''


SMALL_DISK = '''
set -u
W="$1"; OUT="$2"; shift 2
mount -t tmpfs -o size=7m tmpfs "$W" || exit 99
run() {{ name=$1; shift; "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; echo $? >"$OUT/$name.rc"; }}
run full {cmd} --config.epochs=2
ls "$W/run/checkpoints" >"$OUT/full.ls"
mount -o remount,size=40m "$W"
run freed {cmd} --config.epochs=2
mount --bind "$W/run/checkpoints" "$W/run/checkpoints"
mount -o remount,ro,bind "$W/run/checkpoints"
run readonly {cmd} --config.epochs=3
ls "$W/run/checkpoints" >"$OUT/readonly.ls"
'''


def test_a_full_or_read_only_disk_stops_with_one_line_and_the_rerun_resumes(tmp_path):
  """A 7 MB tmpfs holds one tiny checkpoint (4.5 MB) but not two: the second save fails. Once
  the tmpfs is enlarged the rerun resumes from the first; a read-only checkpoints folder then
  stops the next save at once. Run in a user and mount namespace (unshare -rm)."""
  reason = _unshare_available(tmp_path)
  if reason:
    pytest.skip(reason)
  mount, out = tmp_path / 'disk', tmp_path / 'out'
  mount.mkdir()
  out.mkdir()
  cmd = ' '.join(cli_args('pretrain', mount / 'run', **{'evals.knn.every_epochs': 0}))
  proc = subprocess.run(['unshare', '-rm', 'bash', '-c', SMALL_DISK.format(cmd=cmd), 'x', str(mount), str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  read = lambda name: (out / name).read_text()
  err = read('full.err')
  assert read('full.rc').strip() == '2', err[-2000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: cannot write checkpoint 16 in '), err[-2000:]
  assert 'No space left on device' in lines[0] and 'resume from checkpoint 8' in lines[0]
  assert 'notice: ' in read('full.out') and 'free in' in read('full.out')  # warned before the save
  assert read('full.ls').split() == ['8']  # the previous checkpoint is intact, nothing half-written
  assert read('freed.rc').strip() == '0', read('freed.err')[-2000:]
  assert 'resumed from' in read('freed.out') and 'checkpoints/8' in read('freed.out')
  err = read('readonly.err')
  lines = [l for l in err.splitlines() if l.strip()]
  assert read('readonly.rc').strip() == '2' and len(lines) == 1, err[-2000:]
  assert 'cannot write checkpoint 24' in lines[0] and 'Read-only file system' in lines[0]
  assert read('readonly.ls').split() == ['16', '8']


def _wait_for_line(proc, fragment, timeout=300):
  deadline = time.time() + timeout
  lines = []
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if fragment in line:
      return lines
  raise AssertionError(f'{fragment!r} never appeared: {lines}')


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_data_loads_exits_75_with_one_line(tmp_path, sig):
  env = {**os.environ, 'SIMCLR_JAX_CACHE': str(tmp_path / 'empty-cache'), 'PYTHONUNBUFFERED': '1'}
  proc = subprocess.Popen(cli_args('pretrain', tmp_path / 'w'), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_line(proc, 'compute dtype')  # printed just before the dataset is decoded (15 s here)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err[-2000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(f'preempted: {sig.name} outside training'), err[-2000:]


SECOND_SIGINT = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from simclr_jax import interrupts
    interrupts.install()
    with interrupts.deferred() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print('first:', flag.name, flush=True)  # deferred: the loop would save, then stop
        os.kill(os.getpid(), signal.SIGINT)      # a second Ctrl-C during a long save
        time.sleep(5)
        print('still running', flush=True)
''')


def test_a_second_sigint_during_a_long_save_exits_at_once():
  proc = subprocess.run([sys.executable, '-c', SECOND_SIGINT, ROOT], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 75 and proc.stdout.strip() == 'first: SIGINT', (proc.stdout, proc.stderr)
  assert proc.stderr.startswith('preempted: second SIGINT: stopped at once without saving')


def test_a_cache_that_does_not_match_its_source_is_rebuilt_with_a_notice(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  good = data.load_dataset(DATASET, DATA_DIR, train_limit=100)
  test_cache = next(p for p in (tmp_path / 'cache').rglob('test-0.npz'))
  with np.load(test_cache) as f:
    fingerprint = f['fingerprint']
  for images, labels, why in (
      (np.zeros((10000, 16, 16, 3), np.uint8), np.zeros(10000, np.int32), 'images (10000, 16, 16, 3)'),
      (good.test.images, np.full(10000, 12, np.int32), 'labels outside [-1, 10)')):
    np.savez(test_cache, images=images, labels=labels, fingerprint=fingerprint)
    capsys.readouterr()
    again = data.load_dataset(DATASET, DATA_DIR, train_limit=100)
    out = capsys.readouterr().out
    assert 'does not match' in out and why in out, out
    np.testing.assert_array_equal(again.test.images, good.test.images)
    np.testing.assert_array_equal(again.test.labels, good.test.labels)
  np.savez(test_cache, images=good.test.images, labels=good.test.labels, fingerprint=np.asarray('{}'))
  data.load_dataset(DATASET, DATA_DIR, train_limit=100)
  assert 'made from other source files' in capsys.readouterr().out


def test_notices_for_a_train_limit_above_the_split_and_a_set_smaller_than_a_batch(capsys):
  ds = data.load_dataset(DATASET, DATA_DIR, train_limit=60000)
  assert len(ds.train.images) == 50000
  assert 'notice: train_limit=60000 is above the 50000 training images' in capsys.readouterr().out
  small = data.Dataset('small', 10, ds.train.subset(slice(0, 40)), ds.test)
  from simclr_jax import parallel
  inputs = input_pipeline.device_inputs(small, parallel.make_mesh(), batch_size=64, seed=0)
  assert inputs.steps_per_epoch == 1
  assert 'notice: the training set has 40 images, fewer than batch_size=64' in capsys.readouterr().out


def test_a_config_file_that_raises_is_named_and_an_empty_workdir_is_refused(tmp_path):
  bad = tmp_path / 'bad_config.py'
  bad.write_text('def get_config():\n  raise RuntimeError("forgot to set the dataset")\n')
  proc = subprocess.run([sys.executable, '-m', 'simclr_jax.main', f'--config={bad}', f'--workdir={tmp_path}/w'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert f"config file '{bad}' raised RuntimeError: forgot to set the dataset" in lines[0]
  proc = subprocess.run([sys.executable, '-m', 'simclr_jax.main', '--config=configs/pretrain.py', '--workdir='],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and error_line(proc).startswith('error: --workdir is empty'), proc.stderr[-2000:]
