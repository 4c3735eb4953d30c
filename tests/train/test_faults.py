"""Faults beyond kills and NaNs: a workdir in use, a full or read-only disk, signals outside the
training loop, stale caches, and the notices for odd sizes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import DATA_DIR, DATASET, ROOT, cli_args, error_line, run_cli, tiny_config
from simclr_jax.train import checkpoint
from simclr_jax.data import pipeline, registry, sources
from simclr_jax.stages import workdir as workdir_lib
from simclr_jax.core.errors import CheckpointError, ConfigError

HOLD_LOCK = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from simclr_jax.stages import workdir
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
  os.close(workdir_lib._held.pop(os.path.join(str(tmp_path), workdir_lib.LOCK_NAME)))


@pytest.mark.e2e
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


@pytest.mark.e2e
@pytest.mark.slow
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


@pytest.mark.e2e
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
  assert len(lines) == 1 and lines[0].startswith(f'preempted: {sig.name} while loading the data'), err[-2000:]
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


SECOND_SIGINT = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from simclr_jax.core import interrupts
    interrupts.install()
    with interrupts.deferred() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print('first:', flag.name, flush=True)  # deferred: the loop would save, then stop
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # as a save does while Orbax works
        os.kill(os.getpid(), signal.SIGINT)      # a second Ctrl-C during a long save
        time.sleep(5)
        print('still running', flush=True)
''')


def test_a_second_sigint_during_a_long_save_exits_at_once():
  """With the line on the run's stderr, although the save has pointed fd 2 at /dev/null."""
  proc = subprocess.run([sys.executable, '-c', SECOND_SIGINT, ROOT], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 75 and proc.stdout.strip() == 'first: SIGINT', (proc.stdout, proc.stderr)
  assert proc.stderr.startswith('preempted: second SIGINT: stopped at once without saving')


def test_a_cache_that_does_not_match_its_source_is_rebuilt_with_a_notice(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  good = registry.load(DATASET, DATA_DIR, train_limit=100, test_split='test[:300]')
  test_cache = next(p for p in (tmp_path / 'cache').rglob('test[[]:300[]]-0.npz'))
  with np.load(test_cache) as f:
    fingerprint = f['fingerprint']
  for images, labels, why in (
      (np.zeros((300, 16, 16, 3), np.uint8), np.zeros(300, np.int32), 'images (300, 16, 16, 3)'),
      (good.test.images, np.full(300, 12, np.int32), 'labels outside [-1, 10)')):
    np.savez(test_cache, images=images, labels=labels, fingerprint=fingerprint)
    capsys.readouterr()
    again = registry.load(DATASET, DATA_DIR, train_limit=100, test_split='test[:300]')
    out = capsys.readouterr().out
    assert 'does not match' in out and why in out, out
    np.testing.assert_array_equal(again.test.images, good.test.images)
    np.testing.assert_array_equal(again.test.labels, good.test.labels)
  np.savez(test_cache, images=good.test.images, labels=good.test.labels, fingerprint=np.asarray('{}'))
  registry.load(DATASET, DATA_DIR, train_limit=100, test_split='test[:300]')
  assert 'made from other source files' in capsys.readouterr().out


def test_notices_for_a_train_limit_above_the_split_and_a_set_smaller_than_a_batch(capsys):
  ds = registry.load(DATASET, DATA_DIR, train_limit=60000, test_split='')
  assert len(ds.train.images) == 50000
  assert 'notice: train_limit=60000 is above the 50,000 training images' in capsys.readouterr().out
  from simclr_jax.core import parallel
  small = sources.in_memory('small', ds.train.subset(slice(0, 40)), num_classes=10)
  inputs, _ = pipeline.make_inputs(small, None, 'device', parallel.make_mesh(), batch_size=64, seed=0)
  assert inputs.steps_per_epoch == 1
  assert 'notice: the training set has 40 images, fewer than batch_size=64' in capsys.readouterr().out
  one = sources.in_memory('one', ds.train.subset(slice(0, 1)), num_classes=10)
  pipeline.make_inputs(one, None, 'device', parallel.make_mesh(), batch_size=64, seed=0)
  assert 'the training set has 1 image, fewer' in capsys.readouterr().out


def test_an_empty_workdir_is_refused():
  with pytest.raises(ConfigError, match='--workdir is empty'):
    workdir_lib.prepare('', tiny_config())


TEMPORARY = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from simclr_jax.core import interrupts
    interrupts.install()
    path = sys.argv[2]
    with interrupts.phase('writing the decode cache'), interrupts.temporary(path):
        with open(path, 'w') as f:
            f.write('half')
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
''')


def test_a_signal_while_a_file_is_written_removes_it_and_names_what_it_stopped(tmp_path):
  path = tmp_path / 'cache.npz.tmp123.npz'
  proc = subprocess.run([sys.executable, '-c', TEMPORARY, ROOT, str(path)], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 75 and not path.exists(), (proc.stdout, proc.stderr)
  assert proc.stderr.startswith('preempted: SIGTERM while writing the decode cache')


def test_results_without_checkpoints_are_refused_and_fresh_keeps_them(pretrained_workdir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(pretrained_workdir, workdir)
  shutil.rmtree(workdir / 'checkpoints')
  before = (workdir / 'results.json').read_bytes()
  with pytest.raises(ConfigError, match='holds results.json but no checkpoint .* pass --fresh') as e:
    workdir_lib.prepare(str(workdir), tiny_config())
  assert '\n' not in str(e.value) and (workdir / 'results.json').read_bytes() == before
  workdir_lib.prepare(str(workdir), tiny_config(), fresh=True)
  assert (workdir / 'previous-1' / 'results.json').read_bytes() == before
  assert not (workdir / 'results.json').exists() and not (workdir / 'metrics.jsonl').exists()


def test_a_first_run_that_saved_no_checkpoint_is_moved_aside_with_a_notice(tmp_path, capsys):
  """A first run that failed before its first checkpoint left config.json and a few metrics: the
  next run (here with another batch size) keeps them in previous-1 and says so."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(tiny_config(batch_size=32).to_json())
  (workdir / 'metrics.jsonl').write_text('{"kind": "train", "step": 4, "loss": 4.8}\n')
  workdir_lib.prepare(str(workdir), tiny_config())
  out = capsys.readouterr().out
  assert (f'notice: the earlier run in {workdir} is moved to {workdir}/previous-1 (it saved no checkpoint); '
          'this run starts afresh') in out, out
  assert sorted(os.listdir(workdir / 'previous-1')) == ['config.json', 'metrics.jsonl']
  assert json.loads((workdir / 'config.json').read_text())['batch_size'] == 64  # this run's config


def test_a_newest_checkpoint_without_its_meta_is_set_aside_and_fresh_always_works(pretrained_workdir, tmp_path, capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(pretrained_workdir, workdir)
  os.remove(workdir / 'checkpoints' / '16' / 'meta' / 'metadata')
  assert checkpoint.list_steps(str(workdir)) == [8]
  workdir_lib.prepare(str(workdir), tiny_config())
  out = capsys.readouterr().out
  assert 'notice: checkpoint 16 in' in out and 'moved to 16.incomplete and the run is resuming from checkpoint 8' in out
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['16.incomplete', '8']
  (workdir / 'checkpoints' / '8' / 'meta' / 'metadata').write_text('{not json')
  with pytest.raises(CheckpointError, match='8 is corrupt: its record .*/meta/metadata cannot be read .*: start '
                     'afresh with --fresh') as e:
    workdir_lib.prepare(str(workdir), tiny_config())
  assert '\n' not in str(e.value)
  workdir_lib.prepare(str(workdir), tiny_config(), fresh=True)  # --fresh works whatever is there
  assert sorted(os.listdir(workdir / 'previous-1' / 'checkpoints')) == ['16.incomplete', '8']


def _copy_and_its_largest_data_file(pretrained_workdir, tmp_path):
  """(a copy of the shared run, the largest data file of its newest checkpoint's arrays)."""
  workdir = tmp_path / 'run'
  shutil.copytree(pretrained_workdir, workdir)
  data = workdir / 'checkpoints' / '16' / 'state' / 'ocdbt.process_0' / 'd'
  return workdir, max(data.iterdir(), key=lambda p: p.stat().st_size)


def test_a_damaged_checkpoint_file_is_named_before_anything_trains(pretrained_workdir, tmp_path):
  """One bit flipped in the arrays' data file of the newest checkpoint: Orbax reads it without a
  complaint, the checksums saved with the checkpoint stop the resume with one line naming the
  array; load_encoder checks the encoder's arrays the same way."""
  from conftest import train_in_process
  workdir, path = _copy_and_its_largest_data_file(pretrained_workdir, tmp_path)
  with open(path, 'r+b') as fh:
    fh.seek(path.stat().st_size // 2)
    byte = fh.read(1)
    fh.seek(-1, 1)
    fh.write(bytes([byte[0] ^ 0x10]))
  with pytest.raises(CheckpointError) as e:
    train_in_process(tiny_config(epochs=3), workdir)
  message = str(e.value)
  assert '\n' not in message and f'checkpoint {workdir}/checkpoints/16 is corrupt: the array' in message
  assert 'does not match the checksum saved with it' in message and 'resume from checkpoint 8' in message
  meta_path = workdir / 'checkpoints' / '8' / 'meta' / 'metadata'
  meta = json.loads(meta_path.read_text())
  meta['checksums'][".params['encoder']['stem_conv']['kernel']"] = '00000000'
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(CheckpointError, match=r"the array \.params\['encoder'\]\['stem_conv'\]\['kernel'\] does not match"):
    checkpoint.restore_encoder(str(workdir / 'checkpoints' / '8'))


def test_a_truncated_checkpoint_file_is_named_corrupt_with_the_way_on(pretrained_workdir, tmp_path):
  """A data file of the newest checkpoint cut short (a disk that filled up, a copy that stopped):
  the same line a flipped bit gets, naming the checkpoint to fall back on; its record cut short too;
  the checkpoint before it untouched."""
  from conftest import train_in_process
  workdir, path = _copy_and_its_largest_data_file(pretrained_workdir, tmp_path)
  with open(path, 'r+b') as fh:
    fh.truncate(path.stat().st_size // 3)
  with pytest.raises(CheckpointError) as e:
    train_in_process(tiny_config(epochs=3), workdir)
  assert str(e.value) == (f'checkpoint {workdir}/checkpoints/16 is corrupt: its arrays cannot be read (a damaged, '
                          f'truncated or missing file under {workdir}/checkpoints/16/state): move {workdir}/checkpoints/16 away '
                          'to resume from checkpoint 8')
  manifest = workdir / 'checkpoints' / '16' / 'state' / 'ocdbt.process_0' / 'manifest.ocdbt'
  manifest.write_bytes(manifest.read_bytes()[:10])  # the index of the arrays, cut short
  with pytest.raises(CheckpointError, match='16 is corrupt: its arrays cannot be read .*: move .*16 away to resume '
                     'from checkpoint 8'):
    train_in_process(tiny_config(epochs=3), workdir)
  meta = workdir / 'checkpoints' / '16' / 'meta' / 'metadata'
  meta.write_text(meta.read_text()[:50])
  with pytest.raises(CheckpointError, match='16 is corrupt: its record .*16/meta/metadata cannot be read .*: move '
                     '.*16 away to resume from checkpoint 8'):
    workdir_lib.prepare(str(workdir), tiny_config(epochs=3))
  variables, meta = checkpoint.restore_encoder(str(workdir / 'checkpoints' / '8'))  # checksums verified
  assert meta['step'] == 8 and variables['params']['encoder']


@pytest.mark.e2e
@pytest.mark.slow
def test_a_signal_during_the_final_evaluation_stops_at_once_and_loses_nothing(tmp_path):
  """SIGTERM while the final evaluation runs: the final checkpoint was written before it, the run
  stops within seconds (exit 75, one line naming what it stopped), and the rerun only evaluates."""
  workdir = tmp_path / 'w'
  fields = {'epochs': 1, 'evals.linear.every_epochs': 0, 'evals.linear.steps': 5000, 'evals.knn.every_epochs': 0,
            'test_split': 'test'}
  env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
  proc = subprocess.Popen(cli_args('pretrain', workdir, **fields), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_line(proc, 'evaluating (epoch 1)')
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert time.time() - sent < 15, 'the evaluation went on after SIGTERM'
  lines = [l for l in err.splitlines() if l.strip()]
  assert proc.returncode == 75 and len(lines) == 1, err[-2000:]
  assert lines[0].startswith('preempted: SIGTERM while evaluating (epoch 1): checkpoint 8 is kept'), lines[0]
  assert checkpoint.list_steps(str(workdir)) == [8] and not (workdir / 'results.json').exists()
  rerun = run_cli('pretrain', workdir, **fields)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'resumed from' in rerun.stdout and 'compiling the training step' not in rerun.stdout
  results = json.loads((workdir / 'results.json').read_text())
  assert results['knn_top1'] is not None and results['linear_top1'] is not None and results['steps'] == 8


def test_the_compilation_cache_folder_follows_jax_and_the_user_cache():
  from simclr_jax.train import compile_cache
  assert compile_cache.cache_dir({}) == os.path.join(os.path.expanduser('~'), '.cache', 'simclr_jax', 'xla')
  assert compile_cache.cache_dir({'XDG_CACHE_HOME': '/x'}) == '/x/simclr_jax/xla'
  assert compile_cache.cache_dir({'SIMCLR_JAX_CACHE': '/c', 'XDG_CACHE_HOME': '/x'}) == '/c/xla'
  assert compile_cache.cache_dir({'JAX_COMPILATION_CACHE_DIR': '/j', 'SIMCLR_JAX_CACHE': '/c'}) == '/j'
  for off in ('false', '0', 'False'):
    assert compile_cache.cache_dir({'JAX_ENABLE_COMPILATION_CACHE': off, 'JAX_COMPILATION_CACHE_DIR': '/j'}) is None
