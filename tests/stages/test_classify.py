"""Downstream stages from a real pretraining checkpoint: CLI runs, restore, frozen encoder, label subsets."""
import json
import re
import os

import jax
import numpy as np
import pytest

import simclr_jax
from conftest import DATA_DIR, DATASET, build, make_inputs, run_cli, tiny_config
from simclr_jax.train import checkpoint
from simclr_jax.stages import classify
from simclr_jax.data import registry
from simclr_jax.core import parallel
from simclr_jax.train import loop


def _encoder_of(path):
  variables, _ = checkpoint.restore_encoder(str(path))
  return {c: variables[c]['encoder'] for c in ('params', 'batch_stats')}


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize('stage,fields', [('finetune', {}), ('linear_eval', {'protocol': 'augmented'}),
                                          ('supervised', {})])
def test_each_stage_runs_through_the_cli(pretrained_workdir, tmp_path, stage, fields):
  workdir = tmp_path / stage
  if stage != 'supervised':
    fields = {**fields, 'init_from': pretrained_workdir}
  proc = run_cli(stage, workdir, epochs=2, label_fraction=0.5, **fields)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((workdir / 'results.json').read_text())
  for key in ('test_top1', 'best_test_top1', 'best_epoch', 'train_top1', 'label_fraction', 'train_seconds'):
    assert r[key] is not None, key
  assert r['label_fraction'] == 0.5 and len(r['history']) == 2
  assert all(h['train_top1'] is not None and h['test_loss'] is not None for h in r['history'])
  assert r['init_from'] == (None if stage == 'supervised' else str(pretrained_workdir))
  assert os.listdir(workdir / 'checkpoints')
  if stage == 'linear_eval':  # the features probe runs at the end of the augmented protocol too
    assert r['protocol'] == 'augmented' and 0 < r['linear_top1'] <= 1


@pytest.mark.e2e
def test_linear_eval_on_features_fits_without_training_and_keeps_its_result(pretrained_workdir, tmp_path):
  """The command line with init_from and no model, width, stem or dataset: one line says what came
  from the checkpoint, the model line has no steps per epoch (features are fitted, not trained),
  and the run ends with its figures and results.json's path, no JSON on the terminal; a rerun
  keeps the result."""
  workdir = tmp_path / 'linear'
  fields = {'init_from': pretrained_workdir, 'label_fraction': 0.5, 'train_limit': 512, 'test_split': 'test[:1000]',
            'eval_batch_size': 500}
  proc = run_cli('linear_eval', workdir, tiny=False, **fields)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((workdir / 'results.json').read_text())
  assert r['protocol'] == 'features' and 0.1 < r['test_top1'] <= 1 and r['weight_decay'] > 0
  assert r["train_examples"] == 260 and not (workdir / 'checkpoints').exists()
  out = proc.stdout
  assert 'fewer than batch_size' not in out  # the features probe has no batches
  assert f'from init_from {pretrained_workdir}: model resnet10, width 0.125, stem cifar, dataset cifar10_jpeg' in out
  model_line = next(l for l in out.splitlines() if 'training image' in l)
  assert 'resnet10 width 0.125, stem cifar' in model_line and 'per epoch' not in model_line
  assert 'done: linear_eval on cifar10_jpeg, fitted on frozen features' in out and '{"' not in out
  assert f'figures: test top-1 {100 * r["test_top1"]:.1f}%' in out and f'results: {workdir}/results.json' in out
  again = run_cli('linear_eval', workdir, tiny=False, **fields)
  assert again.returncode == 0 and 'complete' in again.stdout and 'figures: test top-1' in again.stdout
  assert json.loads((workdir / 'results.json').read_text()) == r


def _build(stage, init_from, **fields):
  if stage != 'supervised':
    fields['init_from'] = str(init_from)
  config = tiny_config(stage, **fields)
  mesh = parallel.make_mesh()
  inputs, _ = make_inputs(config, mesh)
  task, settings = build(classify.build_task, config, mesh, inputs)
  return config, task, settings


def test_finetune_starts_from_the_pretrained_encoder_and_a_fresh_head(pretrained_workdir):
  _, task, _ = _build('finetune', pretrained_workdir)
  saved = _encoder_of(pretrained_workdir)
  _assert_trees_equal(task.state.params['encoder'], saved['params'])
  _assert_trees_equal(task.state.batch_stats['encoder'], saved['batch_stats'])
  _, scratch, _ = _build('supervised', '')
  assert not np.allclose(scratch.state.params['encoder']['stem_conv']['kernel'],
                         saved['params']['stem_conv']['kernel'])


def test_linear_eval_leaves_the_encoder_bit_identical(pretrained_workdir, tmp_path):
  config, task, settings = _build('linear_eval', pretrained_workdir, epochs=2, protocol='augmented')
  head_before = np.asarray(task.state.params['head']['kernel']).copy()
  loop.run(task, str(tmp_path), settings)
  after = _encoder_of(tmp_path)
  _assert_trees_equal(after, _encoder_of(pretrained_workdir))
  head_after = checkpoint._read_numpy_subtrees(checkpoint.find_checkpoint(str(tmp_path)) + '/state',
                                               ('params',))['params']['head']['kernel']
  assert not np.allclose(head_before, head_after)


def test_label_subset_is_balanced_and_identical_for_finetune_and_supervised(pretrained_workdir):
  fine = _build('finetune', pretrained_workdir, label_fraction=0.1)[1].inputs
  sup = _build('supervised', '', label_fraction=0.1)[1].inputs
  np.testing.assert_array_equal(fine.images['train'], sup.images['train'])
  np.testing.assert_array_equal(fine.host_labels['train'], sup.host_labels['train'])
  counts = np.bincount(np.asarray(sup.host_labels['train']), minlength=10)
  assert np.all(counts == counts[0]) and counts.sum() == 50  # 10% of 512, balanced over 10 classes
  assert len(sup.host_labels['test']) == 1000  # the test split is always complete (test[:1000] here)


def test_load_encoder_embeds_images_in_user_code(pretrained_workdir):
  encoder = simclr_jax.load_encoder(str(pretrained_workdir))
  images = registry.load(DATASET, DATA_DIR, train_limit=16, test_split='').train.images
  features = encoder.embed(images, batch_size=10)
  assert features.shape == (16, 64) and features.dtype == np.float32
  assert np.all(np.isfinite(features)) and not np.allclose(features[0], features[1])
  np.testing.assert_allclose(features, encoder.embed(images), rtol=1e-5, atol=1e-5)


def test_load_encoder_and_embed_check_their_inputs(pretrained_workdir, tmp_path):
  from simclr_jax.core.errors import UserError
  with pytest.raises(UserError, match=f"load_encoder path '{tmp_path}/nothing' does not exist"):
    simclr_jax.load_encoder(str(tmp_path / 'nothing'))
  encoder = simclr_jax.load_encoder(str(pretrained_workdir))
  images = registry.load(DATASET, DATA_DIR, train_limit=4, test_split='').train.images
  assert encoder.embed(images[:0]).shape == (0, 64)
  for bad, fragment in ((images / 255.0, 'got float64'),
                        (images.transpose(0, 3, 1, 2), 'got shape (4, 3, 32, 32)'),
                        (images[..., 0], 'got shape (4, 32, 32)'),
                        (images[0], 'got shape (32, 32, 3)'),
                        (np.zeros((4, 24, 24, 3), np.uint8), 'got 24x24')):
    with pytest.raises(UserError, match=re.escape(fragment)) as e:
      encoder.embed(bad)
    assert 'uint8 [N, 32, 32, 3]' in str(e.value) and '\n' not in str(e.value)
