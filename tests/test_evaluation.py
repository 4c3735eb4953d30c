"""The evaluation tools: the online probe leaves pretraining untouched, the offline probe agrees with
scikit-learn, evaluators come from the config, pictures and portable weights."""
import json
import os

import jax
import numpy as np
import pytest

import simclr_jax
from conftest import DATA_DIR, DATASET, tiny_config
from simclr_jax import data, evaluate, input_pipeline, parallel, pretrain
from simclr_jax.linear_probe import fit_linear_probe, standardize


@pytest.fixture(scope='module')
def dataset():
  return data.load_dataset(DATASET, DATA_DIR, train_limit=256)


def _steps(config, dataset, n):
  mesh = parallel.make_mesh()
  inputs = input_pipeline.device_inputs(dataset, mesh, config.batch_size, config.seed)
  task = pretrain.build_task(config, mesh, inputs)
  initial = jax.tree.map(np.array, task.state.params)  # a copy: the step donates its input state
  step, state = inputs.bind(task.step_fn), task.state
  for args in list(inputs.epoch(0))[:n]:
    state, metrics = step(state, *args)
  return task, initial, state, metrics


def test_the_online_probe_changes_nothing_in_the_encoder_and_projector_updates(dataset):
  _, initial, state_a, metrics = _steps(tiny_config(), dataset, 3)
  _, _, state_b, _ = _steps(tiny_config(online_probe_learning_rate=0.0), dataset, 3)
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
  task, _, state, _ = _steps(tiny_config(), dataset, 2)
  ctx = evaluate.EvalContext(task.infer, state.variables, task.inputs, 500)
  got = evaluate.OnlineLinearEvaluator(tiny_config().evals.online_linear)(ctx)['online_linear_top1']
  head = jax.tree.map(np.asarray, state.params['online_probe'])
  logits = np.asarray(ctx.features('test')) @ head['kernel'] + head['bias']
  assert abs(got - np.mean(logits.argmax(1) == dataset.test.labels)) < 1e-6


def test_evaluators_come_from_the_config_each_with_its_own_sub_config(capsys):
  config = tiny_config(**{'evals.knn.k': 7, 'evals.linear.every_epochs': -1})
  made = evaluate.make_evaluators(config.evals, {'labels'})
  assert [e.name for e in made] == ['knn']  # online_linear needs the probe; linear is off
  assert made[0].k == 7 and made[0].every_epochs == 1
  assert 'notice: evaluator online_linear is skipped: the run has no probe' in capsys.readouterr().out


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
  assert meta['model'] == 'resnet18' and meta['width'] == 0.125 and meta['image_shape'] == [32, 32, 3]
  assert meta['feature_dim'] == 64 and len(meta['mean']) == 3
  assert 'params/stem_conv/kernel' in names and 'batch_stats/stage1_block1/BatchNorm_0/mean' in names
  images = dataset.test.images[:50]
  original = simclr_jax.load_encoder(str(pretrained_workdir)).embed(images)
  reloaded = simclr_jax.load_encoder(path).embed(images)
  np.testing.assert_array_equal(original, reloaded)


def test_pictures_of_a_run_are_written(pretrained_workdir, tmp_path):
  from simclr_jax.pictures import pictures_of_run
  paths = pictures_of_run(str(pretrained_workdir), str(tmp_path), max_points=300)
  for key in ('embedding_map', 'retrieval'):
    with open(paths[key], 'rb') as f:
      head = f.read(4)
    assert head == b'\x89PNG' and os.path.getsize(paths[key]) > 20000, key
