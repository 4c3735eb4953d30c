"""SimCLR v2's semi-supervised workflow: a v2 pretraining (three-layer head with BatchNorm), a
fine-tuning from the head's first layer at 1% of the labels, and a distillation of that teacher
into a narrower student on every training image, on cifar10_jpeg and on an unlabelled folder
with a labelled eval set; each stage stopped by SIGTERM and resumed. The distillation objective
is checked against the float64 oracle written from the paper (tests/oracles.py)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import oracles
from conftest import DATA_DIR, DATASET, final_params, run_in_process, tiny_config
from simclr_jax import validate
from simclr_jax.data import registry, sources
from simclr_jax.stages import distill
import simclr_jax
from simclr_jax.core.errors import CheckpointError, ConfigError, Preempted, UserError
from image_folders import make_folder


class _Fixed:
  """Stands for a Flax module whose logits are given (the objective alone is under test)."""

  def __init__(self, logits):
    self.logits = logits

  def apply(self, variables, x, train=True, mutable=()):
    out = {'logits': self.logits}
    return (out, {'batch_stats': {}}) if mutable else out


def test_the_distillation_objective_matches_the_float64_oracle_with_and_without_labels():
  rng = np.random.default_rng(21)
  s, t = rng.normal(size=(32, 10)), 3 * rng.normal(size=(32, 10))
  labels = np.where(rng.random(32) < 0.25, rng.integers(0, 10, 32), -1)
  for temperature, weight in ((1.0, 0.0), (2.0, 0.0), (1.0, 0.3), (0.5, 1.0)):
    fn = distill.distill_loss_fn(_Fixed(jnp.asarray(s, jnp.float32)), _Fixed(jnp.asarray(t, jnp.float32)),
                                 temperature, weight)
    loss, (_, _, metrics) = fn({}, {}, {'teacher': {}}, None, jnp.asarray(labels), 0)
    want = oracles.distillation(s, t, temperature, labels, weight)
    assert abs(float(loss) - want) < 1e-5 * max(1.0, abs(want)), (temperature, weight, float(loss), want)
    assert float(metrics['teacher_agreement']) == np.mean(s.argmax(-1) == t.argmax(-1))
  # No labelled image in the batch: the label term is 0, not NaN.
  fn = distill.distill_loss_fn(_Fixed(jnp.asarray(s, jnp.float32)), _Fixed(jnp.asarray(t, jnp.float32)), 1.0, 0.5)
  loss = fn({}, {}, {'teacher': {}}, None, -jnp.ones(32, jnp.int32), 0)[0]
  assert abs(float(loss) - 0.5 * oracles.distillation(s, t, 1.0)) < 1e-5


def test_a_label_fraction_keeps_every_image_and_the_labels_of_a_balanced_subset():
  train = sources.Split(np.zeros((200, 8, 8, 3), np.uint8), np.arange(200, dtype=np.int32) % 10)
  source = sources.in_memory('toy', train, train, num_classes=10)
  keep = sources.balanced_subset(train.labels, 0.1, 10)
  relabelled = sources.keep_labels(source, keep)
  labels = relabelled.labels('train')
  assert relabelled.size('train') == 200 and np.sum(labels >= 0) == len(keep) == 20
  assert np.array_equal(labels[keep], train.labels[keep]) and np.all(np.delete(labels, keep) == -1)
  assert np.array_equal(relabelled.decode('train').labels, labels)
  assert np.array_equal(relabelled.labels('test'), train.labels)  # the test split keeps its labels


def test_distill_fields_are_validated_with_one_line_naming_the_fix():
  for fields, match in (({}, 'teacher_from=.*set --config.teacher_from=runs/finetune'),
                        ({'teacher_from': 'x', 'distill_temperature': 0.0}, 'distill_temperature=0.0'),
                        ({'teacher_from': 'x', 'distill_label_weight': 1.5}, 'distill_label_weight=1.5')):
    with pytest.raises(ConfigError, match=match):
      validate.validate_config(tiny_config('distill', **fields))


# The v2 head, small; without the online probe, as the unlabelled folder's run has none, so that
# both v2 pretraining runs compile one program.
V2_HEAD = {'projection_dims': (64, 64, 32), 'evals.online_linear.every_epochs': -1, 'online_probe_learning_rate': 0.0}


def _stopped_and_resumed(config, workdir, stop_at_step):
  """Runs the config stopped by SIGTERM before stop_at_step, then resumed: (results, the step
  the stop saved)."""
  with pytest.raises(Preempted):
    run_in_process(config, workdir, stop_at_step=stop_at_step)
  saved = final_params(workdir)[0]
  return run_in_process(config, workdir), saved


def _same_arrays(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_the_v2_workflow_on_cifar10_jpeg_each_stage_resumable(tmp_path):
  pre = tiny_config('pretrain_v2', epochs=1, batch_size=64, learning_rate=0.3, **V2_HEAD)
  results, saved = _stopped_and_resumed(pre, tmp_path / 'pre', stop_at_step=3)
  assert saved == 3 and results['knn_top1'] is not None and results['finetune_from_head_layer'] == 1
  # torchvision's network has no head layer: without head_layer=0 the export is refused naming it (with
  # it, this narrow ResNet is refused for its width: tests/test_portable.py).
  with pytest.raises(UserError, match="export_encoder\\(..., layout='torchvision', head_layer=0\\)"):
    simclr_jax.export_encoder(str(tmp_path / 'pre'), str(tmp_path / 'v2.safetensors'), layout='torchvision')
  with pytest.raises(UserError, match='at width 0.125'):
    simclr_jax.export_encoder(str(tmp_path / 'pre'), str(tmp_path / 'v2.safetensors'), layout='torchvision',
                              head_layer=0)

  fine = tiny_config('finetune', init_from=str(tmp_path / 'pre'), finetune_from_head_layer=1,
                     label_fraction=0.01, batch_size=16, epochs=4)  # 1%: one image of each class
  ft, saved = _stopped_and_resumed(fine, tmp_path / 'fine', stop_at_step=2)
  assert saved == 2 and ft['finetune_from_head_layer'] == 1 and ft['test_top1'] is not None
  _, params = final_params(tmp_path / 'fine')
  assert sorted(params['params']) == ['encoder', 'head', 'projector']
  assert sorted(params['params']['projector']) == ['dense_0', 'norm_0']  # the head's first layer (BatchNorm)

  student = dict(teacher_from=str(tmp_path / 'fine'), label_fraction=0.01, width=0.0625, epochs=2)
  straight = run_in_process(tiny_config('distill', **student), tmp_path / 'straight')
  resumed, saved = _stopped_and_resumed(tiny_config('distill', **student), tmp_path / 'distill', stop_at_step=11)
  assert saved == 11
  (_, a), (_, b) = final_params(tmp_path / 'straight'), final_params(tmp_path / 'distill')
  assert _same_arrays(a, b)  # bit-identical after the stop, teacher included
  assert set(a['method_state']['teacher']['params']) == {'encoder', 'projector', 'head'}
  assert resumed['test_top1'] == straight['test_top1'] is not None
  assert resumed['teacher'] == {'workdir': str(tmp_path / 'fine'), 'stage': 'finetune', 'model': 'resnet10',
                                'width': 0.125, 'finetune_from_head_layer': 1, 'label_fraction': 0.01,
                                'dataset': DATASET}
  assert resumed['student'] == {'model': 'resnet10', 'width': 0.0625, 'from': 'scratch'}
  assert resumed['labelled_examples'] == 10 and resumed['train_examples'] == 512
  metrics = [json.loads(l) for l in (tmp_path / 'straight' / 'metrics.jsonl').read_text().splitlines()]
  agreement = [m['teacher_agreement'] for m in metrics if 'teacher_agreement' in m]
  assert agreement and all(0 <= a <= 1 for a in agreement)
  # A teacher of another image size is refused with one line.
  with pytest.raises(CheckpointError, match='was trained on 32 px images, this run has 40 px'):
    run_in_process(tiny_config('distill', image_size=40, **student), tmp_path / 'other')


@pytest.mark.slow
def test_the_v2_workflow_on_an_unlabelled_folder_with_a_labelled_eval_set(tmp_path):
  source = registry.load(DATASET, DATA_DIR, train_limit=500, test_split='')
  root = make_folder(tmp_path / 'loose', source, 300, labelled=False, corrupt=0)
  labelled = make_folder(tmp_path / 'labelled', source, 200, splits=True, corrupt=0, start=300)
  before = sorted(str(p) for p in tmp_path.rglob('*'))
  folder = dict(dataset=f'folder:{root}', image_size=32, train_limit=0, eval_dataset=f'folder:{labelled}')
  pre = tiny_config('pretrain_v2', epochs=1, **folder, **V2_HEAD)
  results, saved = _stopped_and_resumed(pre, tmp_path / 'pre', stop_at_step=2)
  assert saved == 2 and results['knn_top1'] is not None
  fine = tiny_config('finetune', init_from=str(tmp_path / 'pre'), finetune_from_head_layer=1, image_size=32,
                     dataset=f'folder:{labelled}', train_limit=0, label_fraction=0.01, batch_size=4, epochs=2)
  ft, _ = _stopped_and_resumed(fine, tmp_path / 'fine', stop_at_step=2)
  assert ft['test_top1'] is not None
  student = tiny_config('distill', teacher_from=str(tmp_path / 'fine'), width=0.0625, epochs=2, **folder)
  out, saved = _stopped_and_resumed(student, tmp_path / 'distill', stop_at_step=5)
  assert saved == 5 and out['test_top1'] is not None and out['labelled_examples'] == 0
  assert out['train_examples'] == 300 and out['teacher']['dataset'] == f'folder:{labelled}'
  now = sorted(str(p) for p in tmp_path.rglob('*') if not str(p).startswith(str(tmp_path / 'pre'))
               and not str(p).startswith(str(tmp_path / 'fine')) and not str(p).startswith(str(tmp_path / 'distill')))
  assert now == before  # nothing written into the users' folders
