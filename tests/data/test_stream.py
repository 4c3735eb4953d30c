"""The streamed input path (grain workers, each process reading its share): the same images at each
step as the device path, resume, label fractions, several hosts, and its faults."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (DATA_DIR, DATASET, ROOT, cli_args, device_env, final_params, make_inputs, run_cli, tiny_config,
                      train_in_process)
from simclr_jax.data import pipeline, registry
from simclr_jax.core.errors import DataError, Preempted


def _inputs(placement, **fields):
  config = tiny_config(train_limit=256, data_placement=placement, input_workers=1, **fields)
  return config, make_inputs(config)[0]


def test_both_paths_give_the_same_images_at_each_step():
  _, device = _inputs('device')
  _, stream = _inputs('stream')
  assert (device.kind, stream.kind) == ('device', 'stream')
  for epoch in (0, 1):
    np.testing.assert_array_equal(device.step_indices(epoch), stream.step_indices(epoch))
  images = np.asarray(device.images['train'])
  spe = stream.steps_per_epoch
  for k, (x, y) in stream.batches(spe, 2 * spe):
    idx = device.step_indices(1)[k - spe]
    np.testing.assert_array_equal(np.asarray(x), images[idx])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(device.host_labels['train'])[idx])
  stream.close()


def test_placement_auto_streams_what_does_not_fit_and_says_why(capsys):
  source = registry.get(DATASET, DATA_DIR)  # 60,000 images of 32 x 32 x 3 bytes: 0.17 GiB
  assert pipeline.choose_placement('auto', source.nbytes(), memory=2**28) == 'stream'
  assert ("data placement stream (config.data_placement=auto): the uint8 splits take 0.17 GiB, 40% of "
          "one device's 0.2 GiB is 0.10 GiB") in capsys.readouterr().out
  assert source.nbytes(10000) == 20000 * 32 * 32 * 3  # a train_limit counts
  assert pipeline.choose_placement('auto', source.nbytes(), memory=2**30) == 'device'
  assert pipeline.choose_placement('stream', source.nbytes(), memory=2**32) == 'stream'


@pytest.mark.slow
def test_a_streamed_run_stopped_and_resumed_ends_as_the_device_path_does(tmp_path):
  """The same seed and settings: identical parameters and kNN on the CPU, resume included."""
  fields = dict(train_limit=256, epochs=2, input_workers=1, **{'evals.knn.every_epochs': 0})
  device = train_in_process(tiny_config(data_placement='device', **fields), tmp_path / 'device')
  stream_config = tiny_config(data_placement='stream', **fields)
  with pytest.raises(Preempted):
    train_in_process(stream_config, tmp_path / 'stream', stop_at_step=5)  # mid-epoch
  stream = train_in_process(stream_config, tmp_path / 'stream')
  assert stream['knn_top1'] == device['knn_top1'] and stream['online_linear_top1'] == device['online_linear_top1']
  (s1, a), (s2, b) = final_params(tmp_path / 'device'), final_params(tmp_path / 'stream')
  assert s1 == s2 == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_label_fractions_pick_the_same_images_on_both_paths():
  fields = dict(train_limit=1000, label_fraction=0.1, batch_size=32)
  device, _ = make_inputs(tiny_config('supervised', data_placement='device', **fields))
  stream, test = make_inputs(tiny_config('supervised', data_placement='stream', input_workers=1, **fields))
  assert stream.num_examples == device.num_examples == 100
  for (_, (x, y)), idx in zip(stream.batches(0, stream.steps_per_epoch), device.step_indices(0)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(device.images['train'])[idx])
  stream.close()
  chunks = list(test.chunks('test', 400))  # the evaluation streams its split in chunks
  assert [valid for _, valid, _ in chunks] == [400, 400, 200]
  np.testing.assert_array_equal(np.concatenate([l for _, _, l in chunks]), device.host_labels['test'])


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _check(tmp_path, mode, processes, devices_each):
  port = _free_port()
  env = device_env(devices_each)
  extra = lambda i: ([f'--coordinator=127.0.0.1:{port}', f'--num_processes={processes}', f'--process_id={i}']
                     if processes > 1 else [])
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'stream_check.py'),
                             os.path.join(ROOT, 'tests'), str(tmp_path), mode] + extra(i), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return sorted((json.loads(o.strip().splitlines()[-1]) for o, _ in outs), key=lambda r: r['process'])


@pytest.mark.slow
def test_two_hosts_each_read_a_disjoint_half_and_match_one_host(tmp_path):
  """Each host reads its half of every global batch, and from the same state the two-host step
  equals the one-host step within float32 reduction order. The hosts' all-reduces (Gloo) sum in
  another order than one process does; so does one process on half the devices, which gives the
  bound. Chained steps are not compared: in this tiny run a one-ulp difference grows 30 to 80
  times a step (a 1e-7 relative perturbation of the initial parameters moves the fourth loss by
  7e-4), so each step is replayed from the reference's own previous state."""
  one = _check(tmp_path, 'reference', processes=1, devices_each=4)[0]
  two = _check(tmp_path, 'replay', processes=2, devices_each=2)
  assert [r['devices'] for r in two] == [4, 4] and one['devices'] == 4
  assert [r['rows'] for r in two] == [[0, 32], [32, 64]] and one['rows'] == [0, 64]
  halves = [set(r['read']) for r in two]
  assert len(two[0]['read']) == len(two[1]['read']) == 128 and not halves[0] & halves[1]
  assert halves[0] | halves[1] == set(one['read'])  # together, exactly the one-host epoch
  assert len(two[0]['loss_diff']) == len(one['losses']) == len(one['half_state_diff']) == 4
  for diffs in (two[0]['loss_diff'], one['half_loss_diff']):
    for loss, diff in zip(one['losses'], diffs):
      assert diff <= 1e-6 * abs(loss), (one['losses'], diffs)
  # Another reduction order within one process gives the scale. The two are of one size (the
  # hosts' difference once measured at 1.02 times the half devices', about 2.5e-6), hence the
  # factor 2; a host reading other rows changes the update itself, far above float32 rounding.
  bound = 2 * max(one['half_state_diff'])
  assert 0 < max(two[0]['state_diff']) <= bound, (two[0]['state_diff'], one['half_state_diff'])
  assert two[0]['loss_diff'] == two[1]['loss_diff'] and two[0]['state_diff'] == two[1]['state_diff']


def _children(pid):
  out = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          fields = f.read().rsplit(')', 1)[1].split()
        with open(f'/proc/{entry}/cmdline') as f:
          cmd = f.read()
      except OSError:
        continue
      if int(fields[1]) == pid and 'spawn_main' in cmd:
        out.append(int(entry))
  return out


@pytest.mark.slow
def test_a_dead_worker_stops_the_run_with_one_line_and_the_rerun_resumes(tmp_path):
  fields = dict(train_limit=1024, epochs=2, log_every_steps=2, data_placement='stream', input_workers=2,
                **{'evals.knn.every_epochs': 0})
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(cli_args('pretrain', workdir, **fields), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline, killed = time.time() + 600, None
  while time.time() < deadline and proc.poll() is None and killed is None:
    rows = (workdir / 'metrics.jsonl').read_text().splitlines() if (workdir / 'metrics.jsonl').exists() else []
    workers = _children(proc.pid)
    if len(rows) >= 2 and workers:
      os.kill(workers[0], signal.SIGKILL)
      killed = workers[0]
    time.sleep(0.2)
  assert killed, 'the run ended before a worker could be killed'
  _, err = proc.communicate(timeout=600)
  lines = [l for l in err.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, err[-3000:]
  assert lines[0].startswith('error: the input pipeline stopped') and 'rerun the same command' in lines[0]
  rerun = run_cli('pretrain', workdir, **fields)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 32


def test_the_threads_of_a_worker_open_a_tfds_split_one_at_a_time(monkeypatch):
  """A grain worker's reading threads all ask for their first records at once; each first read
  imports tensorflow_datasets and opens the split. Two threads inside tensorflow_datasets' lazy
  imports at once deadlocked (seen: a streamed run hung at its start, a worker's two reading
  threads each waiting for the lock the other held), so the first open is one thread at a time,
  and once. A stand-in for tensorflow_datasets counts the threads inside it."""
  import threading
  import types
  from simclr_jax.data import records as records_lib
  inside, calls, most = [0], [0], [0]
  lock = threading.Lock()

  def builder(name, data_dir=None, file_format=None):
    with lock:
      inside[0] += 1
      calls[0] += 1
      most[0] = max(most[0], inside[0])
    time.sleep(0.2)
    with lock:
      inside[0] -= 1
    return types.SimpleNamespace(as_data_source=lambda split, decoders: [{'image': b'x', 'label': 3}] * 4)

  fake = types.SimpleNamespace(builder=builder, decode=types.SimpleNamespace(SkipDecoding=lambda: None))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake)
  records = records_lib.TfdsRecords('cifar10_jpeg', '', 'test', 4)
  got = []
  threads = [threading.Thread(target=lambda: got.append(records[1][1])) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(30)
  assert got == [3] * 8 and most[0] == 1 and calls[0] == 1, (got, most, calls)


def _sleep_forever():
  time.sleep(600)


def test_a_worker_killed_while_the_reader_waits_forever_stops_the_wait_with_one_line():
  """What a worker killed in the middle of writing a batch can leave: grain's reader blocked on the
  half-written message for ever (seen in CI). The wait watches the workers and stops with the
  input pipeline's one-line error within a few seconds and stops the other workers."""
  import multiprocessing
  import threading

  class Blocked:
    def __next__(self):
      threading.Event().wait()

  workers = [multiprocessing.get_context('spawn').Process(target=_sleep_forever, name=f'grain-process-prefetch-{i}',
                                                         daemon=True) for i in range(2)]
  for w in workers:
    w.start()
  inputs = object.__new__(pipeline.StreamInputs)
  inputs._iterator, inputs._worker_processes = Blocked(), set()
  assert inputs._next(iter([{'image': 1}])) == {'image': 1}  # a step that sees the workers alive
  workers[0].kill()
  raised = []

  def wait():  # in a thread, so that a wait that never ends fails the test instead of hanging it
    try:
      inputs._next(inputs._iterator)
    except DataError as e:
      raised.append(str(e))
  waiting = threading.Thread(target=wait, daemon=True)
  waiting.start()
  waiting.join(3 * pipeline._WORKER_CHECK_SECONDS + pipeline._GRACE_SECONDS + 5)
  assert not waiting.is_alive(), 'the wait did not notice the dead worker'
  assert len(raised) == 1 and raised[0].startswith('the input pipeline stopped (a reading worker exited with code -9)')
  assert raised[0].endswith('rerun the same command to resume')
  assert inputs._iterator is None and not inputs._worker_processes
  workers[1].join(5)
  assert workers[1].exitcode == -signal.SIGKILL  # the worker still running is stopped too


def test_both_paths_train_on_the_same_images_of_a_folder_with_a_broken_one_and_say_so_once(tmp_path, capsys):
  """An unreadable image mid-epoch: both paths hold 100 images, the broken one black and
  unlabelled, give the same notice once per run, or stop beyond max_bad_fraction."""
  from PIL import Image
  root = tmp_path / 'pics'
  root.mkdir()
  source = registry.load(DATASET, DATA_DIR, train_limit=99, test_split='')
  for k, pixels in enumerate(source.train.images):
    Image.fromarray(pixels).save(root / f'{k:03d}.png')
  (root / '050.jpg').write_bytes(b'not a jpeg')  # readable name, unreadable content
  fields = dict(dataset=f'folder:{root}', image_size=32, train_limit=0, batch_size=20, input_workers=1)
  device, _ = make_inputs(tiny_config(data_placement='device', max_bad_fraction=0.05, **fields))
  notices = [l for l in capsys.readouterr().out.splitlines() if 'cannot be read' in l]
  assert len(notices) == 1 and '1 of the 100 images of folder:' in notices[0] and '050.jpg' in notices[0]
  stream, _ = make_inputs(tiny_config(data_placement='stream', max_bad_fraction=0.05, **fields))
  assert stream.num_examples == device.num_examples == 100
  spe = stream.steps_per_epoch
  for k, (x, y) in stream.batches(0, 2 * spe):  # two epochs: the notice comes once
    idx = device.step_indices(k // spe)[k % spe]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(device.images['train'])[idx])
    np.testing.assert_array_equal(np.asarray(y), device.host_labels['train'][idx])
  stream.close()
  streamed = [l for l in capsys.readouterr().out.splitlines() if 'cannot be read' in l]
  assert [l.split(' ', 1)[1] for l in streamed] == [l.split(' ', 1)[1] for l in notices]  # the same words
  with pytest.raises(DataError, match=r'1 of the 100 images of folder:.* cannot be read, more than '
                                      r'max_bad_fraction=0.001 \(050.jpg'):
    strict, _ = make_inputs(tiny_config(data_placement='stream', max_bad_fraction=0.001, **fields))
    list(strict.batches(0, spe))


def test_stream_without_grain_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'grain', None)
  _, stream = _inputs('stream')
  with pytest.raises(DataError, match=r"data_placement=stream needs grain: pip install -e '.\[stream\]'"):
    next(stream.batches(0, 1))
