"""Shared helpers: the prepared cifar10_jpeg copy, tiny configs and a CLI runner."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get('SIMCLR_JAX_TEST_DATA',
                          os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'tfds')))
DATASET = 'cifar10_jpeg'

TINY = {'dataset': DATASET, 'data_dir': DATA_DIR, 'train_limit': 512, 'width': 0.125,
        'dtype': 'float32', 'batch_size': 64, 'epochs': 2, 'warmup_epochs': 0.0,
        'log_every_steps': 4, 'eval_batch_size': 500, 'checkpoint_every_epochs': 1}
# Fields only pretraining configs have: kNN every epoch; the offline probe (tested on its own) off.
TINY_PRETRAIN = {'evals.knn.every_epochs': 1, 'evals.linear.every_epochs': -1}


@pytest.fixture(scope='session', autouse=True)
def _cache_dir(tmp_path_factory):
  """One decoded-array cache for the whole session, subprocesses included."""
  if 'SIMCLR_JAX_CACHE' not in os.environ:
    os.environ['SIMCLR_JAX_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def tiny_config(stage: str = 'pretrain', **fields):
  """configs/<stage>.py with the tiny settings and `fields` applied."""
  from simclr_jax.config_base import apply_overrides, load_config_file
  return apply_overrides(load_config_file(os.path.join(ROOT, 'configs', f'{stage}.py')),
                         {**tiny_fields(stage), **fields})


def tiny_fields(stage: str) -> dict:
  return {**TINY, **(TINY_PRETRAIN if stage == 'pretrain' else {})}


def cli_args(stage: str, workdir, **fields) -> list:
  args = [sys.executable, '-m', 'simclr_jax.main', f'--config={ROOT}/configs/{stage}.py',
          f'--workdir={workdir}']
  for key, value in {**tiny_fields(stage), **fields}.items():
    args.append(f'--config.{key}={value}')
  return args


def run_cli(stage: str, workdir, *extra, timeout=600, env=None, **fields) -> subprocess.CompletedProcess:
  """Runs the CLI in a subprocess; returns the completed process (stdout and stderr as text)."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(cli_args(stage, workdir, **fields) + list(extra), cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
  """The CLI's one-line error (the last line on stderr that starts with 'error:')."""
  lines = [l for l in proc.stderr.splitlines() if l.startswith(('error:', 'preempted:'))]
  return lines[-1] if lines else proc.stderr[-2000:]


@pytest.fixture(scope='session')
def pretrained_workdir(tmp_path_factory):
  """A real one-epoch pretraining run made through the CLI, shared by the downstream tests."""
  workdir = tmp_path_factory.mktemp('pretrained') / 'run'
  proc = run_cli('pretrain', workdir, epochs=1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def pretrain_task(config):
  """The pretraining task of a config, its inputs made as the CLI makes them."""
  from simclr_jax import input_pipeline, parallel, pretrain
  mesh = parallel.make_mesh()
  inputs, eval_inputs = input_pipeline.make_inputs(config, mesh)
  return pretrain.build_task(config, mesh, inputs, eval_inputs)


def train_in_process(config, workdir, stop_at_step=None):
  """train_loop.run of a pretraining config; with stop_at_step, a SIGTERM right after that step
  (the loop saves a checkpoint, then raises Preempted)."""
  import signal
  from simclr_jax import train_loop
  task = pretrain_task(config)
  if stop_at_step is not None:
    bind = task.inputs.bind

    def bind_and_stop(core):
      step = bind(core)

      def step_fn(state, *args):
        out = step(state, *args)
        if int(out[0].step) == stop_at_step:
          os.kill(os.getpid(), signal.SIGTERM)
        return out
      return step_fn
    task.inputs.bind = bind_and_stop
  return train_loop.run(config, str(workdir), task)


def final_params(workdir):
  """(step, {'params', 'batch_stats'} as numpy) of a workdir's newest checkpoint."""
  from simclr_jax import checkpoint
  step = checkpoint.list_steps(str(workdir))[-1]
  path = os.path.join(checkpoint.checkpoint_dir(str(workdir)), str(step), 'state')
  return step, checkpoint._read_numpy_subtrees(path, ('params', 'batch_stats'))
