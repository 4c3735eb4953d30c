"""The evaluation tools: the online probe leaves pretraining untouched, the offline probe agrees with
scikit-learn, evaluators come from the config, pictures and portable weights."""
import json
import os

import jax
import numpy as np
import pytest

import simclr_jax
from conftest import DATA_DIR, DATASET, build, make_inputs, tiny_config
from simclr_jax.data import registry
from simclr_jax import evals
from simclr_jax.core import parallel
from simclr_jax.stages import pretrain
from simclr_jax.evals.linear_probe import fit_linear_probe, standardize


@pytest.fixture(scope='module')
def dataset():
  return registry.load(DATASET, DATA_DIR, train_limit=256, test_split='test[:1000]')


def _steps(config, n):
  mesh = parallel.make_mesh()
  inputs, _ = make_inputs(config, mesh)
  task, _ = build(pretrain.build_task, config, mesh, inputs)
  initial = jax.tree.map(np.array, task.state.params)  # a copy: the step donates its input state
  step, state = inputs.bind(task.step_fn), task.state
  for _, args in inputs.batches(0, n):
    state, metrics = step(state, *args)
  return task, initial, state, metrics


@pytest.mark.slow
def test_the_online_probe_changes_nothing_in_the_encoder_and_projector_updates(dataset):
  _, initial, state_a, metrics = _steps(tiny_config(train_limit=256), 3)
  _, _, state_b, _ = _steps(tiny_config(train_limit=256, online_probe_learning_rate=0.0), 3)
  assert 'online_probe' in state_a.params and 'online_probe' not in state_b.params
  assert {'loss', 'probe_loss', 'probe_top1'} <= set(metrics)
  for group in ('encoder', 'projector'):
    for a, b in zip(jax.tree.leaves(state_a.params[group]), jax.tree.leaves(state_b.params[group])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(state_a.batch_stats), jax.tree.leaves(state_b.batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(state_a.params['online_probe']['kernel']),
                         initial['online_probe']['kernel'])  # the probe itself trained


def test_the_online_probe_evaluator_scores_the_probe_head_on_test_features(dataset):
  task, _, state, _ = _steps(tiny_config(train_limit=256), 2)
  ctx = evals.EvalContext(task.infer, state.variables, task.inputs, 500)
  got = evals.OnlineLinearEvaluator('online_linear', tiny_config().evals.online_linear)(ctx)['online_linear_top1']
  head = jax.tree.map(np.asarray, state.params['online_probe'])
  logits = np.asarray(ctx.outputs('test')['features']) @ head['kernel'] + head['bias']
  assert abs(got - np.mean(logits.argmax(1) == dataset.test.labels)) < 1e-6


def test_evaluators_come_from_the_config_each_with_its_own_sub_config(capsys):
  config = tiny_config(**{'evals.knn.k': 7, 'evals.linear.every_epochs': -1})
  made = evals.make_evaluators(config.evals, {'labels'})
  assert [e.name for e in made if not e.skipped] == ['knn', 'knn20']  # online_linear needs the probe; linear is off
  assert [e.name for e in made if e.skipped] == ['online_linear']  # its figures are null in results.json
  assert made[0].k == 7 and made[0].every_epochs == 1 and made[1].k == 20 and made[1].every_epochs == 10
  # Without a type, the name is the type.
  from ml_collections import ConfigDict
  untyped = evals.make_evaluators(ConfigDict({'knn': {'every_epochs': 2, 'k': 5, 'temperature': 0.1}}), {'labels'})
  assert isinstance(untyped[0], evals.KnnEvaluator) and untyped[0].k == 5
  assert 'notice: evaluator online_linear is skipped: the run has no probe' in capsys.readouterr().out


def test_several_instances_of_one_evaluator_type_each_report_under_their_name():
  from ml_collections import ConfigDict
  from simclr_jax.config_base import evaluator_config
  two = ConfigDict({'knn': evaluator_config('knn', 1, k=200, temperature=0.1),
                    'knn20': evaluator_config('knn', 1, k=20, temperature=0.1)})
  made = evals.make_evaluators(two, {'labels'})
  rng = np.random.default_rng(0)

  class Ctx:
    num_classes = 3
    def labelled(self, split, output='features'):
      n = 300 if split == 'train' else 60
      y = np.arange(n) % 3
      return np.eye(3)[y] + 0.9 * rng.normal(size=(n, 3)), y
  scalars = {}
  for e in made:
    scalars.update(e(Ctx()))
  assert set(scalars) == {'knn_top1', 'knn20_top1'} and [e.label for e in made] == ['kNN (k=200)', 'kNN (k=20)']
  info = evals.describe(made)
  assert info['knn20_top1'] == {'protocol': 'knn', 'label': 'kNN (k=20)'}


def test_the_features_probe_agrees_with_scikit_learn_within_a_point(dataset):
  from sklearn.linear_model import LogisticRegression
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(10, 64))
  train_y, test_y = rng.integers(0, 10, 3000), rng.integers(0, 10, 2000)
  train_f = centres[train_y] * 0.35 + rng.normal(size=(3000, 64))
  test_f = centres[test_y] * 0.35 + rng.normal(size=(2000, 64))
  ours = fit_linear_probe(train_f, train_y, test_f, test_y, 10, weight_decays=(1e-4, 1e-2, 1e-1))
  x_train, x_test = (np.asarray(x, np.float64) for x in standardize(train_f, test_f))
  reference = LogisticRegression(C=1 / (ours['weight_decay'] * len(train_y)), max_iter=2000, tol=1e-8)
  reference.fit(x_train, train_y)
  sk_top1 = reference.score(x_test, test_y)
  assert 0.3 < sk_top1 < 0.95  # neither trivial nor saturated
  assert abs(ours['test_top1'] - sk_top1) < 0.01, (ours, sk_top1)


def test_export_and_reload_give_identical_features(pretrained_workdir, tmp_path, dataset):
  path = simclr_jax.export_encoder(str(pretrained_workdir), str(tmp_path / 'encoder.safetensors'))
  from safetensors import safe_open
  with safe_open(path, framework='numpy') as f:
    meta = {k: json.loads(v) for k, v in f.metadata().items()}
    names = list(f.keys())
  assert meta['model'] == 'resnet10' and meta['width'] == 0.125 and meta['image_shape'] == [32, 32, 3]
  assert meta['feature_dim'] == 64 and len(meta['mean']) == 3
  assert 'params/encoder/stem_conv/kernel' in names and 'batch_stats/encoder/stage1_block1/BatchNorm_0/mean' in names
  assert meta['format'] == 'simclr_jax.encoder/2' and meta['checksums']['params/encoder/stem_conv/kernel']
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()  # as any file the user writes
  images = dataset.test.images[:50]
  original = simclr_jax.load_encoder(str(pretrained_workdir)).embed(images)
  reloaded = simclr_jax.load_encoder(path).embed(images)
  np.testing.assert_array_equal(original, reloaded)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


@pytest.mark.slow
def test_pictures_of_a_run_are_written(pretrained_workdir, tmp_path):
  from simclr_jax.report.pictures import pictures_of_run
  paths = pictures_of_run(str(pretrained_workdir), str(tmp_path), max_points=300)
  for key in ('embedding_map', 'retrieval'):
    with open(paths[key], 'rb') as f:
      head = f.read(4)
    assert head == b'\x89PNG' and os.path.getsize(paths[key]) > 20000, key
