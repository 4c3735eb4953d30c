"""Weights PyTorch loads exactly: the torchvision and timm exports, their networks built from the
file's metadata alone, and the loading code of docs/portable-weights.md run as printed, each
against load_encoder's features on real images."""
import os

import jax
import numpy as np
import pytest

import simclr_jax
import snippets
from conftest import DATA_DIR, DATASET
from simclr_jax import trained_encoder
from simclr_jax.core.errors import UserError
from simclr_jax.data import registry
from simclr_jax.models import resnet

PAGE = 'docs/portable-weights.md'
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(n=16, size=32):
  images = registry.load(DATASET, DATA_DIR, train_split=f'train[:{n}]', test_split='').train.images
  return images if size == 32 else np.repeat(np.repeat(images, size // 32, 1), size // 32, 2)


def random_encoder(model, width=1.0, stem='cifar', size=32, patch_size=4, seed=0):
  """An Encoder of random weights and random BatchNorm statistics (a trained network's are not
  0 and 1, and an export that swapped mean and variance, or a kernel's axes, must show)."""
  spec = {'model': model, 'width': width, 'stem': 'patch' if model.startswith('vit') else stem,
          'dtype': 'float32', 'image_shape': [size, size, 3], 'feature_layer': 0, 'projector': None}
  if model.startswith('vit'):
    spec['patch_size'] = patch_size
  module = trained_encoder._backbone(spec, 0)
  variables = module.init(jax.random.PRNGKey(seed), np.zeros((1, size, size, 3), np.float32), train=False)
  rng = np.random.default_rng(seed)
  noisy = lambda path, x: (np.abs(rng.normal(1, 0.3, x.shape)) + 0.2 if path[-1].key == 'var' else
                           np.asarray(x) + rng.normal(0, 0.05, x.shape)).astype(np.float32)
  variables = jax.tree_util.tree_map_with_path(noisy, jax.tree.map(np.asarray, variables))
  return trained_encoder.Encoder(module, variables, spec, MEAN, STD)


def _close(ours, theirs):
  theirs = np.asarray(theirs)
  assert ours.shape == theirs.shape and np.std(ours) > 1e-3, (ours.shape, theirs.shape)
  assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(ours).max()), np.abs(ours - theirs).max()


def test_the_torchvision_snippet_runs_as_printed_on_an_export_of_resnet18(tmp_path):
  encoder = random_encoder('resnet18')
  encoder.export(str(tmp_path / 'resnet18.safetensors'), layout='torchvision')
  images = _images()
  out = snippets.run(snippets.marked(PAGE)['torchvision'], tmp_path, images_uint8=images)
  _close(encoder.embed(images), out['features'].numpy())
  assert out['arch'] == {'block': 'BasicBlock', 'layers': [2, 2, 2, 2], 'stem': 'cifar'}


@pytest.mark.parametrize('model,stem,size', [('resnet10', 'cifar', 32), ('resnet50', 'imagenet', 64)])
def test_torchvision_builds_each_resnet_from_the_metadata_alone(tmp_path, model, stem, size):
  """torchvision.models.ResNet(block, layers) with the stem the metadata names loads the export
  strictly and gives load_encoder's features: a ResNet-10 (which torchvision has no builder for)
  and a ResNet-50's bottlenecks with the ImageNet stem."""
  import json
  import torch
  import torchvision
  from safetensors import safe_open
  from safetensors.torch import load_file
  encoder = random_encoder(model, stem=stem, size=size)
  path = encoder.export(str(tmp_path / 'net.safetensors'), layout='torchvision')
  with safe_open(path, 'pt') as f:
    arch = json.loads(f.metadata()['torchvision'])
  assert arch == {'block': 'BasicBlock' if model == 'resnet10' else 'Bottleneck',
                  'layers': list(resnet.ARCHITECTURES[model][1]), 'stem': stem}
  net = torchvision.models.ResNet(getattr(torchvision.models.resnet, arch['block']), arch['layers'])
  if arch['stem'] == 'cifar':
    net.conv1, net.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
  net.fc = torch.nn.Identity()
  net.load_state_dict(load_file(path), strict=True)
  images = _images(8, size)
  x = (torch.from_numpy(images).float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
  with torch.no_grad():
    _close(encoder.embed(images), net.eval()(x.permute(0, 3, 1, 2)).numpy())


def test_a_torchvision_export_names_every_array_as_torchvision_does(tmp_path):
  from safetensors.torch import load_file
  path = random_encoder('resnet10').export(str(tmp_path / 'tv.safetensors'), layout='torchvision')
  tensors = load_file(path)
  assert tuple(tensors['conv1.weight'].shape) == (64, 3, 3, 3)  # OIHW
  assert tuple(tensors['layer2.0.downsample.0.weight'].shape) == (128, 64, 1, 1)
  assert {'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.num_batches_tracked'} <= set(tensors)
  assert str(tensors['bn1.num_batches_tracked'].dtype) == 'torch.int64'
  assert not any(k.startswith(('fc.', 'params/', 'batch_stats/')) for k in tensors)
  assert len(tensors) == 5 * (1 + 2 * 4 + 3) + (1 + 2 * 4 + 3)  # torchvision's ResNet(BasicBlock, [1, 1, 1, 1]), no fc
  with pytest.raises(UserError, match="layout='torchvision'"):
    simclr_jax.load_encoder(path)


def test_a_resnet_torchvision_cannot_build_is_refused_with_one_line_and_nothing_written(pretrained_workdir, tmp_path):
  """The shared tiny run is a ResNet-10 at width 0.125: torchvision's ResNets have fixed widths."""
  target = tmp_path / 'tv.safetensors'
  with pytest.raises(UserError, match=r"holds a resnet10 at width 0.125, and torchvision's ResNet has the fixed "
                                      r"widths of width 1 .*export it with layout='flax'"):
    simclr_jax.export_encoder(str(pretrained_workdir), str(target), layout='torchvision')
  assert os.listdir(tmp_path) == []
  flax = simclr_jax.export_encoder(str(pretrained_workdir), str(tmp_path / 'flax.safetensors'))
  images = _images(8)
  np.testing.assert_array_equal(simclr_jax.load_encoder(flax).embed(images),
                                simclr_jax.load_encoder(str(pretrained_workdir)).embed(images))


def test_the_timm_snippet_runs_as_printed_on_an_export_of_a_vit(tmp_path):
  encoder = random_encoder('vit_nano', width=0.125)
  encoder.export(str(tmp_path / 'vit.safetensors'), layout='timm')
  images = _images()
  out = snippets.run(snippets.marked(PAGE)['timm'], tmp_path, images_uint8=images)
  _close(encoder.embed(images), out['features'].numpy())
  assert out['meta']['timm'] == {'img_size': 32, 'patch_size': 4, 'embed_dim': 24, 'depth': 4, 'num_heads': 3,
                                 'mlp_ratio': 4.0, 'qkv_bias': True, 'class_token': True, 'global_pool': 'token',
                                 'num_classes': 0}


def test_the_load_encoder_snippet_runs_as_printed(pretrained_workdir, tmp_path):
  os.makedirs(tmp_path / 'runs')
  os.symlink(pretrained_workdir, tmp_path / 'runs' / 'pretrain')
  images = _images(8)
  out = snippets.run(snippets.marked(PAGE)['load_encoder'], tmp_path, images_uint8=images)
  assert out['features'].shape == (8, out['encoder'].feature_dim) and np.std(out['features']) > 1e-3


def test_strided_convolutions_differ_from_flax_same_padding_and_match_torch():
  """The padding that made earlier exports load wrong: one stride-2 3x3 convolution, Flax with
  torchvision's explicit padding against torch.nn.Conv2d(padding=1)."""
  import jax.numpy as jnp
  import torch
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  conv = resnet.nn.Conv(4, (3, 3), (2, 2), padding=resnet._pad(3), use_bias=False)
  ours = np.asarray(conv.apply({'params': {'kernel': jnp.asarray(kernel)}}, jnp.asarray(x)))
  same = np.asarray(resnet.nn.Conv(4, (3, 3), (2, 2), padding='SAME', use_bias=False).apply(
      {'params': {'kernel': jnp.asarray(kernel)}}, jnp.asarray(x)))
  t = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                 torch.from_numpy(kernel).permute(3, 2, 0, 1), stride=2, padding=1)
  np.testing.assert_allclose(ours, t.permute(0, 2, 3, 1).numpy(), atol=1e-5)
  assert np.abs(same - ours).max() > 0.1
