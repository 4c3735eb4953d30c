"""What a run tells its user: a downstream config takes its encoder and data from the run it starts
from (stages.starts), the model line names what trains (views, chunks, remat, a queue, MAE's
decoder), notices for a queue the run cannot fill and a collapse it causes, and the summary that
ends every run."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from conftest import DATA_DIR, config_file, small_config, tiny_config
from simclr_jax import methods
from simclr_jax.config_base import apply_overrides, load_config_file
from simclr_jax.core.errors import CheckpointError
from simclr_jax.data import augment
from simclr_jax.methods.base import Queue
from simclr_jax.stages import pretrain, runner, starts
from simclr_jax.train.step import TrainState


def _config(stage, **fields):
  return apply_overrides(load_config_file(config_file(stage)), fields)


def test_a_downstream_config_takes_the_encoder_and_data_of_its_start(pretrained_workdir):
  config = _config('linear_eval', init_from=str(pretrained_workdir))
  assert config.model is None and config.dataset is None  # the config file leaves them to the start
  note = starts.fill(config)
  assert (config.model, config.width, config.stem, config.dataset, config.data_dir, config.image_size) == \
      ('resnet10', 0.125, 'cifar', 'cifar10_jpeg', DATA_DIR, 0)
  assert note == (f'from init_from {pretrained_workdir}: model resnet10, width 0.125, stem cifar, dataset '
                  f'cifar10_jpeg in {DATA_DIR} (its record; set --config.<field> to choose another)')
  # A dataset of the user's own keeps its own folder and size (the defaults), the encoder still the start's.
  other = _config('finetune', init_from=str(pretrained_workdir), dataset='cifar10')
  assert 'dataset' not in starts.fill(other) and (other.data_dir, other.image_size, other.model) == ('', 0, 'resnet10')


def test_an_explicit_encoder_value_must_be_the_starts_and_is_refused_before_anything_runs(pretrained_workdir):
  config = _config('finetune', init_from=str(pretrained_workdir), width=0.25)
  with pytest.raises(CheckpointError, match=r"has another encoder \(width: checkpoint 0.125, config 0.25\).*leave "
                                            r"them unset to take its own"):
    starts.fill(config)
  same = _config('finetune', init_from=str(pretrained_workdir), model='resnet10', width=0.125, stem='auto')
  assert starts.fill(same).startswith(f'from init_from {pretrained_workdir}: dataset cifar10_jpeg')
  with pytest.raises(Exception, match='config.init_from=.* finetune needs a pretraining workdir'):
    starts.fill(_config('finetune'))


def test_a_student_takes_its_teachers_architecture_unless_it_names_its_own(supervised_workdir):
  student = _config('distill', teacher_from=str(supervised_workdir))
  assert starts.fill(student).startswith(f'from teacher_from {supervised_workdir}: model resnet10, width 0.125')
  smaller = _config('distill', teacher_from=str(supervised_workdir), model='resnet10', width=0.0625)
  starts.fill(smaller)  # a student of another width is SimCLR v2's distillation, not a conflict
  assert (smaller.width, smaller.dataset) == (0.0625, 'cifar10_jpeg')


def test_the_model_line_names_the_views_chunks_remat_a_queue_and_maes_decoder(capsys):
  def parts(name, chunks=1, remat=False, **fields):
    return pretrain.model_line_parts(*_method(name, **fields), 32, chunks, remat)
  assert parts('simclr') == ('2 x 32 px views',)
  assert parts('dino', 4, True) == ('2 x 32 px + 2 x 16 px views', 'batch in 4 chunks', 'blocks rematerialised')
  assert parts('mocov2plus')[1] == 'queue of 128 rows full at step 2'  # 64 keys a step
  assert parts('swav', queue_start_epochs=3)[1] == 'queue of 64 rows full at step 1 and used from step 24'
  assert parts('mae')[1] == 'decoder 1 x 32 (4 heads; decoder_dim 256 at width 1)'
  inputs = type('Inputs', (), {'image_shape': (32, 32, 3), 'num_examples': 1024, 'steps_per_epoch': 8})()
  runner.log_model({'model': 'vit_nano', 'width': 0.125, 'stem': 'patch', 'patch_size': 4}, 'auto', inputs,
                   parts('dino'))
  runner.log_model({'model': 'resnet10', 'width': 1.0, 'stem': 'cifar'}, 'auto', inputs, epochs=False)
  vit, resnet = capsys.readouterr().out.splitlines()
  assert vit.endswith('vit_nano width 0.125, 4 px patches (8 x 8 of 32 px images), 2 x 32 px + 2 x 16 px views, '
                      '1,024 training images, 8 steps per epoch')
  assert resnet.endswith("resnet10 width 1, stem cifar (config.stem='auto', 32 px images), 1,024 training images")


def _method(name, **fields):
  """(the small config's method, its views spec) for a run of 16 steps."""
  config = small_config(name, **fields)
  method = methods.get(name)(config, 16)
  first = augment.settings_from_config(config.augment)
  return method, method.views(first, augment.settings_from_config(config.augment, config.view2))


def test_maes_decoder_is_as_narrow_as_its_encoder():
  """decoder_dim is the width-1 decoder's: config.width scales it, heads kept (vit_nano at width
  0.125 with the recipe's 8 x 512 decoder trains 8 blocks of 64)."""
  recipe = tiny_config('mae', model='vit_nano', width=0.125)
  assert methods.get('mae')(recipe).decoder_width == 64
  assert methods.get('mae')(apply_overrides(recipe, {'width': 1.0})).decoder_width == 512
  assert methods.get('mae')(apply_overrides(recipe, {'width': 0.3})).decoder_width == 160  # a multiple of 16 heads


def test_a_queue_the_run_cannot_fill_or_never_reads_gets_a_notice():
  assert pretrain.queue_notice(None, 16, 64) == '' and pretrain.queue_notice(Queue(128, 2), 16, 64) == ''
  assert pretrain.queue_notice(Queue(32768, 512), 16, 64) == (
      'notice: the queue of 32,768 rows is full only at step 512, but this run has 16 steps: its random initial '
      'rows are never all replaced; set config.queue_size=64 (full within a tenth of the run) or train longer')
  swav = pretrain.queue_notice(Queue(3840, 15, 500), 100, 256)
  assert 'used from step 500, but this run has 100 steps: the loss never reads it' in swav


class _Constant(nn.Module):
  """A 'model' whose projections are all the same: collapsed by construction."""
  @nn.compact
  def __call__(self, x, train=True):
    return {'projection': jnp.ones((x.shape[0], 8)) + 0 * self.param('w', nn.initializers.zeros, ())}


@pytest.mark.parametrize('queue,blamed', [(Queue(32768, 512), True), (Queue(3840, 15, 500), False), (None, False)])
def test_the_collapse_notice_names_a_queue_still_full_of_its_random_rows(capsys, queue, blamed):
  model, images = _Constant(), jnp.zeros((4, 32, 32, 3), jnp.uint8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  state = TrainState.create(variables['params'], {}, optax.sgd(0.1), 0)
  settings = augment.settings_from_config(tiny_config().augment)
  pretrain.collapse_monitor(model, settings, images, queue)(state)
  out = capsys.readouterr().out
  assert 'notice: the embeddings collapse' in out
  assert ('the queue is the likely cause: at step 0 most of its 32,768 rows are still the random ones it started '
          'with (full at step 512)' in out) == blamed
  assert ('lower the learning rate' in out) == (not blamed)


def test_the_shared_run_ends_with_a_summary_and_the_next_command(pretrained_run):
  stdout, workdir = pretrained_run
  r = json.loads((workdir / 'results.json').read_text())
  assert 'done: simclr on cifar10_jpeg, 2 epochs (16 steps) in ' in stdout
  assert f'kNN (k=200) {100 * r["knn_top1"]:.1f}%' in stdout and f'results: {workdir}/results.json' in stdout
  assert (f'next: python -m simclr_jax.main --config=configs/linear_eval.py --workdir={workdir}_linear '
          f'--config.init_from={workdir}') in stdout
  assert "2 x 32 px views" in stdout
  assert not any(l.split(' ', 1)[-1].startswith('results: {') for l in stdout.splitlines())
