"""Downstream stages from a real pretraining checkpoint: CLI runs, restore, frozen encoder, label subsets."""
import json
import os

import jax
import numpy as np
import pytest

import simclr_jax
from conftest import DATA_DIR, DATASET, run_cli, tiny_config
from simclr_jax import checkpoint, classify, data, parallel, train_loop


def _encoder_of(path):
  variables, _ = checkpoint.restore_encoder(str(path))
  return variables


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('stage', ['finetune', 'linear_eval', 'supervised'])
def test_each_stage_runs_through_the_cli(pretrained_workdir, tmp_path, stage):
  workdir = tmp_path / stage
  proc = run_cli(stage, workdir, epochs=2, init_from=pretrained_workdir, label_fraction=0.5)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((workdir / 'results.json').read_text())
  for key in ('test_top1', 'best_test_top1', 'best_epoch', 'train_top1', 'label_fraction', 'train_seconds'):
    assert r[key] is not None, key
  assert r['label_fraction'] == 0.5 and len(r['history']) == 2
  assert all(h['train_top1'] is not None and h['test_loss'] is not None for h in r['history'])
  assert r['init_from'] == (None if stage == 'supervised' else str(pretrained_workdir))
  assert os.listdir(workdir / 'checkpoints')


def _build(stage, init_from, **fields):
  config = tiny_config(stage, init_from=str(init_from), **fields)
  mesh = parallel.make_mesh()
  data_ = train_loop.load_device_data(config, mesh, config.label_fraction)
  return config, classify.build_task(config, mesh, data_), data_


def test_finetune_starts_from_the_pretrained_encoder_and_a_fresh_head(pretrained_workdir):
  _, task, _ = _build('finetune', pretrained_workdir)
  saved = _encoder_of(pretrained_workdir)
  _assert_trees_equal(task.state['params']['encoder'], saved['params'])
  _assert_trees_equal(task.state['batch_stats']['encoder'], saved['batch_stats'])
  _, scratch, _ = _build('supervised', '')
  assert not np.allclose(scratch.state['params']['encoder']['stem_conv']['kernel'],
                         saved['params']['stem_conv']['kernel'])


def test_linear_eval_leaves_the_encoder_bit_identical(pretrained_workdir, tmp_path):
  config, task, _ = _build('linear_eval', pretrained_workdir, epochs=2)
  head_before = np.asarray(task.state['params']['head']['kernel']).copy()
  train_loop.run(config, str(tmp_path), task)
  after = _encoder_of(tmp_path)
  _assert_trees_equal(after, _encoder_of(pretrained_workdir))
  head_after = checkpoint._read_numpy_subtrees(checkpoint.find_checkpoint(str(tmp_path)) + '/state',
                                               ('params',))['params']['head']['kernel']
  assert not np.allclose(head_before, head_after)


def test_label_subset_is_balanced_and_identical_for_finetune_and_supervised(pretrained_workdir):
  _, _, fine = _build('finetune', pretrained_workdir, label_fraction=0.1)
  _, _, sup = _build('supervised', '', label_fraction=0.1)
  np.testing.assert_array_equal(fine.train_images, sup.train_images)
  np.testing.assert_array_equal(fine.train_labels, sup.train_labels)
  counts = np.bincount(np.asarray(sup.train_labels), minlength=10)
  assert np.all(counts == counts[0]) and counts.sum() == 50  # 10% of 512, balanced over 10 classes
  assert sup.test_images.shape[0] == 10000  # the test split is always complete


def test_load_encoder_embeds_images_in_user_code(pretrained_workdir):
  encoder = simclr_jax.load_encoder(str(pretrained_workdir))
  images = data.load_dataset(DATASET, DATA_DIR, train_limit=16).train_images
  features = encoder.embed(images, batch_size=10)
  assert features.shape == (16, 64) and features.dtype == np.float32
  assert np.all(np.isfinite(features)) and not np.allclose(features[0], features[1])
  np.testing.assert_allclose(features, encoder.embed(images), rtol=1e-5, atol=1e-5)
