"""Shared helpers: the prepared cifar10_jpeg copy, tiny configs, a CLI runner, session-wide caches
and the runs many tests read.

Markers: `e2e` (runs the CLI or a script in a subprocess) and `slow` (tens of seconds or more);
`python -m pytest -m "not slow" tests` is the quick inner loop.
"""
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get('SIMCLR_JAX_TEST_DATA',
                          os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'tfds')))
DATASET = 'cifar10_jpeg'

# One decoded-array cache and one persistent compilation cache for the whole session, subprocesses
# and pytest-xdist workers included (set before anything imports JAX): the same tiny model
# compiles once, not per test. The process that starts the session (pytest, or xdist's controller
# before it starts its workers) makes the folder and removes it when the session ends; the
# workers and the tests' subprocesses find it in SIMCLR_JAX_TEST_SESSION.
_SESSION = os.environ.get('SIMCLR_JAX_TEST_SESSION')
_OWN_SESSION = not _SESSION
if _OWN_SESSION:
  _SESSION = os.environ['SIMCLR_JAX_TEST_SESSION'] = tempfile.mkdtemp(prefix='simclr_jax_tests_')
os.environ.setdefault('SIMCLR_JAX_CACHE', os.path.join(_SESSION, 'data'))
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(_SESSION, 'xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# XLA's CPU backend at LLVM optimisation level 1 rather than 2, and without its newer fusion
# emitters: the tiny pretraining step compiles in about 11 CPU-seconds instead of 15 and runs a
# little slower (0.17-0.18 s a step against 0.13-0.16; measured on the CI machine, 2026-11-30).
XLA_FLAGS = '--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false'
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip()


def _own_cores():
  """Pins this xdist worker, and so the subprocesses it starts, to its own share of the cores
  (worker k of n: the k-th n-th of them; with more workers than cores, as many workers on each
  core). XLA sizes its CPU thread pools by the cores a process may use: unpinned, each worker's
  compiles and steps spread their threads over every core and the workers' threads contend.
  Measured on the 2-core CI machine (2026-11-30): two tiny three-epoch CLI runs side by side take
  30.8 s pinned one to each core against 32.7 s unpinned."""
  worker, count = os.environ.get('PYTEST_XDIST_WORKER', ''), os.environ.get('PYTEST_XDIST_WORKER_COUNT')
  if not (worker.startswith('gw') and count and hasattr(os, 'sched_setaffinity')):
    return
  cores, n = sorted(os.sched_getaffinity(0)), int(count)
  k = int(worker[2:]) % n  # xdist names a worker that replaces a crashed one gw<n>, gw<n+1>, ...
  share = cores[k * len(cores) // n:(k + 1) * len(cores) // n] or [cores[k * len(cores) // n]]
  os.sched_setaffinity(0, share)


_own_cores()


# The subprocesses on several simulated devices (test_methods, test_parallel, test_stream,
# test_multihost) compile programs no other test runs and run a few steps of each; at LLVM level 0
# (with XLA_FLAGS' fusion emitters off) the tiny step compiles in about 4 CPU-seconds instead of 11
# and runs at half the speed. Both sides of each comparison they make run at that level.
MULTI_DEVICE_XLA_FLAGS = '--xla_backend_optimization_level=0'


def device_env(devices: int) -> dict:
  """os.environ (its XLA_FLAGS included) for a subprocess with `devices` simulated CPU devices, at
  MULTI_DEVICE_XLA_FLAGS' optimisation level."""
  flags = f"{os.environ['XLA_FLAGS']} {MULTI_DEVICE_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
  return {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'}

# Tiny runs: a narrow ResNet-10 on 512 training images and 1,000 test images, 8 steps an epoch.
TINY = {'dataset': DATASET, 'data_dir': DATA_DIR, 'train_limit': 512, 'test_split': 'test[:1000]',
        'model': 'resnet10', 'width': 0.125, 'dtype': 'float32', 'batch_size': 64, 'epochs': 2, 'warmup_epochs': 0.0,
        'log_every_steps': 4, 'eval_batch_size': 500, 'checkpoint_every_epochs': 1}
# Fields only pretraining configs have: kNN every epoch; the offline probe (tested on its own) off.
TINY_PRETRAIN = {'evals.knn.every_epochs': 1, 'evals.linear.every_epochs': -1}
# For the checks of mechanics (devices, processes, resuming) that compile a program of their own:
# no online probe and no colour jitter, about a fifth less to compile (test_evaluation and
# test_augment test them; SimCLR's 4-device check in test_methods keeps the probe).
MECHANICS = {'online_probe_learning_rate': 0.0, 'augment.jitter_prob': 0.0}


# The order the tests are handed to the xdist workers (worksteal, pyproject.toml): the slow ones
# first and, of those, the modules whose tests took a minute or more each in CI, so that the
# two workers end together rather than one finishing a long test alone. Worksteal starts the
# second worker at the middle of this order, in the quick tests, whose first shared run compiles
# the common tiny step; the first worker starts with test_multihost, which compiles only programs
# of its own, so that the tests after it find that step compiled rather than compile it again.
LONGEST_FIRST = ('test_multihost.py', 'test_gpu_report.py', 'test_scripts.py', 'test_distill.py', 'test_methods.py',
                 'test_stream.py')


def pytest_sessionfinish(session, exitstatus):
  """Removes the session's caches (about 650 MB after the whole suite) once every worker is done."""
  if _OWN_SESSION:
    shutil.rmtree(_SESSION, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  def rank(item):
    module = item.nodeid.split('::')[0].rsplit('/', 1)[-1]
    slow = item.get_closest_marker('slow') is not None
    return (not slow, LONGEST_FIRST.index(module) if slow and module in LONGEST_FIRST else len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: a module's tests keep their order


def config_file(stage: str) -> str:
  return os.path.join(ROOT, 'configs', f'{stage}.py')


def tiny_config(stage: str = 'pretrain', **fields):
  """configs/<stage>.py (a stage or method config) with the tiny settings and `fields` applied."""
  from simclr_jax.config_base import apply_overrides, load_config_file
  config = load_config_file(config_file(stage))
  return apply_overrides(config, {**tiny_fields(config.stage), **fields})


# The fields a downstream stage leaves unset (stages.starts takes them from init_from): set here, so
# that a tiny downstream run is the same config whether or not its start is read (test_starts tests that).
STARTS = {'stem': 'auto', 'patch_size': 4, 'image_size': 0}


def tiny_fields(stage: str) -> dict:
  return {**TINY, **(TINY_PRETRAIN if stage == 'pretrain' else {}),
          **(STARTS if stage in ('finetune', 'linear_eval', 'distill') else {})}


def _stage_of(name: str) -> str:
  from simclr_jax.config_base import load_config_file
  return load_config_file(config_file(name)).stage


# Each method's own config at tiny sizes (tests/method_check.py): a narrow ResNet-10 and small
# heads, 4 steps an epoch, without colour jitter and, but for SimCLR's (the probe on 4 devices),
# the online probe (MECHANICS).
SMALL = {'model': 'resnet10', 'train_limit': 256, 'projection_dims': (64, 32), 'log_every_steps': 2,
         'evals.knn.every_epochs': -1, 'evals.online_linear.every_epochs': -1, **MECHANICS}
# A ViT for quick tests: vit_nano (4 blocks) at width 0.125 (24 dims, 3 heads) on 32 px images cut
# into 64 patches of 4 px ('name@vit' in the method checks: a method's small config on it); MAE's
# decoder one block of 32 dims (decoder_dim 256 at width 1, scaled by the width as the encoder).
VIT_NANO = {'model': 'vit_nano', 'width': 0.125, 'patch_size': 4}
HEADS = {'simclr': {'online_probe_learning_rate': 1e-3},
         'mocov3': {'predictor_dims': (64, 32)}, 'byol': {'predictor_dims': (64, 32)},
         'simsiam': {'projection_dims': (64, 64, 32), 'predictor_dims': (16, 32)},
         'fastsiam': {'projection_dims': (64, 64, 32), 'predictor_dims': (16, 32), 'num_views': 3},
         'barlow_twins': {'projection_dims': (64, 64, 64)}, 'vicreg': {'projection_dims': (64, 64, 64)},
         'dcl': {'dcl_sigma': 0.5},  # DCLW: its weights over the global batch on 4 devices
         'mocov2plus': {'projection_dims': (64, 32), 'queue_size': 128},  # the queue wraps after 2 steps
         'nnclr': {'projection_dims': (64, 32), 'predictor_dims': (64, 32), 'queue_size': 128},
         # Two 16 px local crops beside the global views; the prototypes train from the first step.
         'dino': {'projection_dims': (64, 32), 'num_prototypes': 64, 'local_crops': 2, 'local_crop_size': 16,
                  'freeze_prototypes_epochs': 0},
         # The queue (one batch, full after the first step) joins the Sinkhorn-Knopp at the second. Without local
         # crops: with them, SwAV's first gradients at this size move by 1% when the weights move by 1e-7
         # on one device (measured), too ill-conditioned for an equality of device counts; DINO's check
         # covers local crops on 4 devices.
         'swav': {'projection_dims': (64, 32), 'num_prototypes': 64, 'local_crops': 0, 'queue_size': 64,
                  'queue_start_epochs': 0, 'freeze_prototypes_epochs': 0},
         # SGD rather than the recipe's AdamW: Adam's first step moves every weight by about the learning
         # rate whatever its gradient's size, so the weights whose gradients cancel to rounding move by
         # +-lr on either device count (measured: 1.8% of the change), which says nothing of the method.
         'mae': {**VIT_NANO, 'decoder_dim': 256, 'decoder_depth': 1, 'decoder_heads': 4, 'optimizer': 'sgd',
                 'learning_rate': 0.3}}


def small_config(name, **fields):
  """The method's config at SMALL sizes with its HEADS; 'name@vit' on VIT_NANO."""
  name, _, backbone = name.partition('@')
  small = {k: v for k, v in SMALL.items() if k != 'projection_dims' or name != 'mae'}  # MAE has no projector
  return tiny_config(name, **{**small, **HEADS.get(name, {}), **(VIT_NANO if backbone == 'vit' else {}), **fields})


def cli_args(stage: str, workdir, tiny: bool = True, **fields) -> list:
  """The command line of a run of configs/<stage>.py: the tiny settings (unless tiny=False) and fields."""
  args = [sys.executable, '-m', 'simclr_jax.main', f'--config={config_file(stage)}', f'--workdir={workdir}']
  for key, value in {**(tiny_fields(_stage_of(stage)) if tiny else {}), **fields}.items():
    args.append(f'--config.{key}={value}')
  return args


def run_cli(stage: str, workdir, *extra, timeout=600, env=None, tiny=True, **fields) -> subprocess.CompletedProcess:
  """Runs the CLI in a subprocess; returns the completed process (stdout and stderr as text)."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(cli_args(stage, workdir, tiny, **fields) + list(extra), cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
  """The CLI's one-line error (the last line on stderr that starts with 'error:')."""
  lines = [l for l in proc.stderr.splitlines() if l.startswith(('error:', 'preempted:'))]
  return lines[-1] if lines else proc.stderr[-2000:]


@contextlib.contextmanager
def _shared(name):
  """(folder, whether it is new) for a session-wide artefact: the first xdist worker to ask makes
  it while the others wait on a lock, then they all read it."""
  folder = os.path.join(_SESSION, name)
  with open(folder + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = os.path.exists(folder + '.done')
    if not done and os.path.exists(folder):
      shutil.rmtree(folder)  # a half-made one from a worker that failed
    yield folder, not done
    open(folder + '.done', 'w').close()


def shared_run(name, stage, **fields):
  """A CLI run shared by the whole session: (its stdout, its workdir)."""
  import pathlib
  with _shared(name) as (folder, new):
    workdir = pathlib.Path(folder) / 'run'
    if new:
      proc = run_cli(stage, workdir, **fields)
      assert proc.returncode == 0, proc.stderr[-3000:]
      pathlib.Path(folder, 'stdout.txt').write_text(proc.stdout)
    return pathlib.Path(folder, 'stdout.txt').read_text(), workdir


@pytest.fixture(scope='session')
def pretrained_run():
  """A real two-epoch pretraining run made through the CLI (its stdout, its workdir), shared by the
  CLI tests and the downstream stages. Tests that change it work on a copy."""
  return shared_run('pretrained', 'pretrain', epochs=2)


@pytest.fixture(scope='session')
def pretrained_workdir(pretrained_run):
  return pretrained_run[1]


@pytest.fixture(scope='session')
def supervised_workdir():
  """A real one-epoch supervised run made through the CLI."""
  return shared_run('supervised', 'supervised', epochs=1)[1]


def make_inputs(config, mesh=None):
  """The inputs of a config, made as the stages make them."""
  from simclr_jax.data import pipeline, registry, sources
  from simclr_jax.core import parallel
  source = registry.get(config.dataset, config.data_dir, image_size=config.image_size,
                        train_split=config.train_split, test_split=config.test_split,
                        test_fraction=config.test_fraction)
  rows = sources.select_rows(source, config.train_limit, config.label_fraction, config.label_seed)
  return pipeline.make_inputs(source, rows, config.data_placement, mesh or parallel.make_mesh(),
                                    config.batch_size, config.seed, workers=config.input_workers,
                                    max_bad_fraction=config.max_bad_fraction)


def build(build_task, config, mesh, inputs, eval_inputs=None):
  """(build_task's task, the loop settings) of a config, as runner.train_and_evaluate makes them."""
  from simclr_jax.stages import runner
  settings = runner.loop_settings(config, inputs.steps_per_epoch, {})
  return build_task(config, mesh, inputs, eval_inputs, settings.total_steps), settings


def pretrain_task(config):
  """The pretraining task of a config and its loop settings, its inputs made as the CLI makes them."""
  from simclr_jax.core import parallel
  from simclr_jax.stages import pretrain
  mesh = parallel.make_mesh()
  inputs, eval_inputs = make_inputs(config, mesh)
  return build(pretrain.build_task, config, mesh, inputs, eval_inputs)


def train_in_process(config, workdir, stop_at_step=None):
  """loop.run of a pretraining config; with stop_at_step, a SIGTERM just before that step
  runs (the loop finishes it, saves a checkpoint, then raises Preempted)."""
  import signal
  from simclr_jax.train import loop
  task, settings = pretrain_task(config)
  if stop_at_step is not None:
    batches = task.inputs.batches

    def signalling(first, total):
      for k, args in batches(first, total):
        if k == stop_at_step - 1:
          os.kill(os.getpid(), signal.SIGTERM)
        yield k, args
    task.inputs.batches = signalling
  return loop.run(task, str(workdir), settings)


def final_params(workdir):
  """(step, {'params', 'batch_stats'} as numpy) of a workdir's newest checkpoint."""
  from simclr_jax.train import checkpoint
  step = checkpoint.list_steps(str(workdir))[-1]
  path = os.path.join(checkpoint.checkpoint_dir(str(workdir)), str(step), 'state')
  return step, checkpoint._read_numpy_subtrees(path, ('params', 'batch_stats', 'method_state'))


@contextlib.contextmanager
def sigterm_before_step(step):
  """Within the block, a SIGTERM just before step `step` of any run on the device path (the loop
  finishes that step, saves a checkpoint, then raises Preempted)."""
  import signal
  from simclr_jax.data import pipeline
  original = pipeline.DeviceInputs.batches

  def signalling(self, first, total):
    for k, args in original(self, first, total):
      if k == step - 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield k, args
  pipeline.DeviceInputs.batches = signalling
  try:
    yield
  finally:
    pipeline.DeviceInputs.batches = original


def run_in_process(config, workdir, stop_at_step=None):
  """Any stage of a config as the CLI runs it (workdir checks, data, loop), in this process;
  with stop_at_step, stopped by a SIGTERM just before that step (Preempted is raised)."""
  from simclr_jax import main
  from simclr_jax.stages import starts, workdir as workdir_lib
  starts.fill(config)
  workdir_lib.prepare(str(workdir), config)
  with sigterm_before_step(stop_at_step) if stop_at_step else contextlib.nullcontext():
    return main.train_and_evaluate(config, str(workdir))
