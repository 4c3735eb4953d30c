"""Command line: python -m simclr_jax.main --config=configs/pretrain.py --workdir=runs/pretrain
               python -m simclr_jax.main --list   # methods and their recipe files, models, data sources, evaluators

Overrides: --config.batch_size=1024. The config's `stage` picks pretraining or a classifier stage;
a pretraining config's `method` picks the self-supervised method (configs/<method>.py).
Exit status: 0 done, 2 bad input (one line on stderr), 3 non-finite loss, 75 preempted (rerun to resume).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Path to a config file, e.g. configs/pretrain.py.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results.json.')
flags.DEFINE_bool('fresh', False, 'Start afresh in a workdir that holds another run (it is moved '
                  'to workdir/previous-N, not deleted).')
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process (0-based).')
flags.mark_flags_as_required(['config', 'workdir'])


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the stage that config.stage names."""
  if config.stage == 'pretrain':
    from simclr_jax.stages import pretrain
    return pretrain.train_and_evaluate(config, workdir)
  if config.stage == 'distill':
    from simclr_jax.stages import distill
    return distill.train_and_evaluate(config, workdir)
  from simclr_jax.stages import classify
  return classify.train_and_evaluate(config, workdir)


def parse_flags(argv):
  """absl flag parsing whose failures (bad config file, unknown field, wrong type) are one line;
  --help and --helpfull print the flags and exit 0."""
  from simclr_jax.core import interrupts
  interrupts.install()  # SIGTERM or SIGINT from here on: exit 75 with one line, at any moment
  if '--list' in argv[1:]:  # what exists: methods and their recipe files, models, data sources, evaluators
    from simclr_jax.catalog import listing
    try:
      print(listing(), flush=True)
    except BrokenPipeError:  # piped into head
      pass
    os._exit(0)
  if any(a in ('--help', '-h', '--helpshort', '--helpfull') for a in argv[1:]):
    try:
      print(__doc__)
      print(flags.FLAGS.main_module_help() if '--helpfull' not in argv else flags.FLAGS.get_help())
    except BrokenPipeError:  # piped into head
      pass
    os._exit(0)
  try:
    args = flags.FLAGS(argv)
    if flags.FLAGS.config is not None:
      flags.FLAGS.config.keys()  # the config file loads lazily: make it fail here
    return args
  except Exception as e:  # absl and ml_collections raise several types here
    from simclr_jax.flag_errors import flag_error
    print(f'error: {flag_error(e, argv)}', file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from simclr_jax import validate
  from simclr_jax.train import compile_cache
  from simclr_jax.core import errors, interrupts
  from simclr_jax.stages import starts, workdir as workdir_lib
  logging.set_verbosity(logging.ERROR)  # library warnings (TFDS, Orbax) stay off the terminal
  config = flags.FLAGS.config
  try:
    taken = starts.fill(config)  # a downstream run's encoder (and unset data) from the run it starts from
    validate.validate_config(config)
    compile_cache.enable()  # a resume or a rerun of the same shapes compiles nothing
    import jax
    if flags.FLAGS.coordinator_address or flags.FLAGS.num_processes:
      jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                                 flags.FLAGS.process_id)
      interrupts.install()  # ours again: the runtime installs its own SIGTERM handler
    if taken:
      from simclr_jax.core.log import log
      log(taken)
    with interrupts.phase('preparing the workdir'):
      workdir_lib.prepare(flags.FLAGS.workdir, config, fresh=flags.FLAGS.fresh)
    with interrupts.phase('loading the data'):
      train_and_evaluate(config, flags.FLAGS.workdir)
  except (errors.UserError, errors.NonFiniteError, errors.Preempted) as e:
    if isinstance(e, errors.UserError):
      workdir_lib.release_unstarted(flags.FLAGS.workdir)  # a refused run leaves no workdir behind
    print(f'error: {e}' if not isinstance(e, errors.Preempted) else f'preempted: {e}',
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Checkpoints and logs are already complete here; skip interpreter teardown, where
    # Orbax's and TensorStore's background threads can print tracebacks after the error line.
    os._exit(e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
