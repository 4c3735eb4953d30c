"""Weights PyTorch loads exactly: the torchvision-layout export in a PyTorch ResNet with
torchvision's names and padding gives the features load_encoder gives, on real images."""
import numpy as np
import pytest

import simclr_jax
from conftest import DATA_DIR, DATASET
from simclr_jax import models
from simclr_jax.models import resnet
from simclr_jax.data import registry

torch = pytest.importorskip('torch', reason='torch is part of the test extra: pip install -e .[test]')


def _torch_features(model, images, mean, std):
  x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2)
  x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
  with torch.no_grad():
    return model.eval()(x).numpy()


def test_the_torchvision_export_loads_into_pytorch_and_gives_the_same_features(pretrained_workdir, tmp_path):
  assert_torch_parity(pretrained_workdir, tmp_path)


def assert_torch_parity(workdir, tmp_path, head_layer=None):
  """The torchvision-layout export of a run's ResNet (head_layer as export_encoder takes it) in a
  PyTorch ResNet with torchvision's names and padding: the features load_encoder gives, within
  1e-4, on 200 cifar10_jpeg images. test_distill runs it on a SimCLR v2 run (head_layer=0)."""
  from safetensors.torch import load_file
  from torch_resnet import resnet
  path = simclr_jax.export_encoder(str(workdir), str(tmp_path / 'tv.safetensors'), layout='torchvision',
                                   head_layer=head_layer)
  encoder = simclr_jax.load_encoder(str(workdir), head_layer)
  spec = encoder.spec
  block, layers = models.ARCHITECTURES[spec['model']]
  model = resnet(layers, width=int(round(64 * spec['width'])), bottleneck=block == 'bottleneck',
                 cifar_stem=spec['stem'] == 'cifar')
  model.load_state_dict(load_file(path), strict=True)  # every name and shape, nothing left over
  images = registry.load(DATASET, DATA_DIR, train_split='train[:200]', test_split='').train.images
  ours = encoder.embed(images)
  theirs = _torch_features(model, images, encoder.mean, encoder.std)
  assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(ours).max()), np.abs(ours - theirs).max()
  try:
    import torchvision
  except Exception:  # torchvision does not import beside torch's CPU build here
    return
  tv = torchvision.models.resnet18() if spec['model'] == 'resnet18' else None
  if tv is not None and spec['width'] == 1.0:
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.maxpool, tv.fc = torch.nn.Identity(), torch.nn.Identity()
    tv.load_state_dict(load_file(path), strict=True)
    np.testing.assert_allclose(_torch_features(tv, images, encoder.mean, encoder.std), ours, atol=1e-4)


def test_strided_convolutions_differ_from_flax_same_padding_and_match_torch():
  """The padding that made earlier exports load wrong: one stride-2 3x3 convolution, Flax with
  torchvision's explicit padding against torch.nn.Conv2d(padding=1)."""
  import jax.numpy as jnp
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
