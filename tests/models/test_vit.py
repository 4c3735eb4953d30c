"""Vision Transformers and MAE: the encoder against timm's own VisionTransformer (the timm-layout
export, on real images), position embeddings at another image size, MAE's loss against the
paper's, fine-tuning from MAE, and SimCLR, MoCo v3 and BYOL stepping on a ViT. DINO on a ViT and
MAE are in the 4-device checks of tests/methods/test_methods.py."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import oracles_mae
import simclr_jax
from conftest import DATA_DIR, DATASET, HEADS, MECHANICS, VIT_NANO, pretrain_task, run_cli, shared_run, tiny_config
from simclr_jax import models
from simclr_jax.core.errors import UserError
from simclr_jax.data import registry
from simclr_jax.methods import mae


@pytest.fixture(scope='session')
def mae_workdir():
  """A one-epoch MAE run of vit_nano through the CLI, shared by the tests here."""
  return shared_run('mae', 'mae', epochs=1, **HEADS['mae'])[1]


def test_the_timm_export_loads_into_timms_vision_transformer_and_gives_the_same_features(mae_workdir, tmp_path):
  """export_encoder(layout='timm') into timm's VisionTransformer (strict: every name and shape,
  nothing left over): its class-token features equal load_encoder's within 1e-4 on 200
  cifar10_jpeg images."""
  import torch
  from safetensors import safe_open
  from safetensors.torch import load_file
  from timm.models.vision_transformer import VisionTransformer
  path = simclr_jax.export_encoder(str(mae_workdir), str(tmp_path / 'vit.safetensors'), layout='timm')
  encoder = simclr_jax.load_encoder(str(mae_workdir))
  with safe_open(path, 'pt') as f:  # timm's model built from the file's metadata alone
    arguments = json.loads(f.metadata()['timm'])
  assert {k: arguments[k] for k in ('embed_dim', 'depth', 'num_heads', 'patch_size')} == \
      {'embed_dim': 24, 'depth': 4, 'num_heads': 3, 'patch_size': 4}
  model = VisionTransformer(**arguments)
  model.load_state_dict(load_file(path), strict=True)
  images = registry.load(DATASET, DATA_DIR, train_split='train[:200]', test_split='').train.images
  ours = encoder.embed(images)
  x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2)
  x = (x - torch.tensor(encoder.mean).view(1, 3, 1, 1)) / torch.tensor(encoder.std).view(1, 3, 1, 1)
  with torch.no_grad():
    theirs = model.eval()(x).numpy()
  assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(ours).max()), np.abs(ours - theirs).max()
  assert np.std(ours) > 1e-3  # real features, not a constant
  with pytest.raises(UserError, match="layout='timm'"):
    simclr_jax.export_encoder(str(mae_workdir), str(tmp_path / 'tv.safetensors'), layout='torchvision')


def test_position_embeddings_are_resized_for_another_image_size():
  """A ViT learned at 32 px runs 16 and 48 px images (its 8 x 8 grid of position embeddings
  resized bicubically to 4 x 4 and 12 x 12), and at 32 px is unchanged by the resize."""
  vit = models.make_encoder('vit_nano', width=0.125, patch_size=4, image_size=32)
  variables = vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  pos = variables['params']['pos_embed']
  assert pos.shape == (1, 65, 24)
  for size in (16, 48):
    assert vit.apply(variables, jnp.ones((2, size, size, 3))).shape == (2, 24)
  np.testing.assert_array_equal(models.vit.resize_grid(pos[:, 1:], 8), pos[:, 1:])
  grid = np.asarray(models.vit.resize_grid(pos[:, 1:], 4)).reshape(4, 4, 24)
  assert np.isfinite(grid).all() and not np.allclose(grid, 0)


def test_a_patch_size_that_does_not_divide_the_images_is_refused_with_one_line():
  """With the dataset's own size (image_size=0 in the config) the check is made where the images'
  size is known: building the encoder."""
  from simclr_jax.core.errors import ConfigError
  with pytest.raises(ConfigError, match=r'config.patch_size=4 is invalid: the images are 30 px; use a divisor'):
    models.encoder_for('vit_nano', 0.125, 'float32', 'auto', (30, 30, 3), 4)
  assert models.encoder_for('resnet10', 0.125, 'float32', 'auto', (30, 30, 3), 4).stem == 'cifar'


@pytest.mark.parametrize('p,ratio,norm_pix', [(4, 0.75, True), (4, 0.5, False), (2, 0.75, True)])
def test_mae_loss_matches_the_paper(p, ratio, norm_pix):
  """MAE's masking and loss against tests/oracles_mae.py (float64, written from the paper and the
  authors' code): the kept patches are those of smallest noise, the target patches normalised,
  the error averaged over the masked patches only."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 8, 8, 3))
  n = (8 // p) ** 2
  noise, recon = rng.uniform(size=(3, n)), rng.normal(size=(3, n, p * p * 3))
  keep = int(n * (1 - ratio))  # MAE's count
  ids_keep, mask_want = oracles_mae.random_masking(noise, ratio)
  ids, _, mask = mae.shuffle(jnp.asarray(noise, jnp.float32), keep)
  np.testing.assert_array_equal(np.asarray(ids), ids_keep)
  np.testing.assert_array_equal(np.asarray(mask), mask_want)
  single = images.astype(np.float32)  # a permutation of the pixels: exact in any precision
  np.testing.assert_array_equal(np.asarray(models.patchify(jnp.asarray(single), p)), oracles_mae.patchify(single, p))
  target = models.patchify(jnp.asarray(images, jnp.float32), p)
  got = float(mae.masked_patch_loss(jnp.asarray(recon, jnp.float32), target, mask, norm_pix))
  want = oracles_mae.mae_loss(images, recon, noise, ratio, p, norm_pix_loss=norm_pix)
  assert abs(got - want) < 1e-5 * max(1.0, abs(want)), (got, want)


def test_the_oracle_agrees_with_its_term_by_term_twin():
  rng = np.random.default_rng(1)
  images, noise, recon = rng.normal(size=(2, 8, 8, 3)), rng.uniform(size=(2, 4)), rng.normal(size=(2, 4, 48))
  for norm_pix in (True, False):
    a = oracles_mae.mae_loss(images, recon, noise, 0.75, 4, norm_pix_loss=norm_pix)
    b = oracles_mae.mae_loss_loops(images, recon, noise, 0.75, 4, norm_pix_loss=norm_pix)
    assert abs(a - b) < 1e-12


def test_a_vit_fine_tunes_from_mae_with_layer_decay_and_clipping(mae_workdir, tmp_path):
  """finetune from the MAE run: AdamW, layer-wise decay 0.75, gradients clipped; the run ends with
  a test accuracy; another patch size is refused naming it."""
  fields = dict(init_from=mae_workdir, epochs=1, optimizer='adamw', learning_rate=1e-3, layer_decay=0.75,
                gradient_clip_norm=1.0, **VIT_NANO)
  proc = run_cli('finetune', tmp_path / 'ft', **fields)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'ft' / 'results.json').read_text())
  assert 0 <= results['test_top1'] <= 1 and results['steps'] == 8
  proc = run_cli('finetune', tmp_path / 'ft8', **{**fields, 'patch_size': 8})
  assert proc.returncode != 0 and 'patch_size: checkpoint 4, config 8' in proc.stderr


@pytest.mark.parametrize('method', ['simclr', 'mocov3'])
def test_the_joint_embedding_methods_train_a_vit(method):
  """Two steps of SimCLR and MoCo v3 (an EMA target and a predictor, as BYOL's) on vit_nano: finite
  losses, and every part of the encoder moved (patch embedding, blocks, class token, position
  embeddings)."""
  config = tiny_config(method, **{**MECHANICS, **VIT_NANO, 'train_limit': 128, 'projection_dims': (64, 32),
                                  'evals.knn.every_epochs': -1, 'online_probe_learning_rate': 0.0,
                                  **({'predictor_dims': (64, 32)} if method != 'simclr' else {})})
  task, _ = pretrain_task(config)
  step = task.inputs.bind(task.step_fn)
  before = jax.tree.map(np.asarray, task.state.params['encoder'])
  state = task.state
  for _, args in task.inputs.batches(0, 2):
    state, metrics = step(state, *args)
    assert np.isfinite(float(metrics['loss']))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(b) - a).max()), before, state.params['encoder'])
  assert all(moved[k] and max(jax.tree.leaves(moved[k])) > 0 for k in ('patch_embed', 'blocks_0', 'blocks_3',
                                                                          'cls_token', 'pos_embed', 'norm')), moved
