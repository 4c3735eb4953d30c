"""Every encoder family behind one interface: build one by name, for a run's images, and describe
it for the stages that rebuild it (downstream stages, load_encoder, export).

    encoder = make_encoder('resnet18', width=1.0, dtype='auto', stem='cifar')
    encoder = make_encoder('vit_tiny', patch_size=4, image_size=32)
    encoder = encoder_for(config.model, config.width, config.dtype, config.stem, (32, 32, 3), config.patch_size,
                          config.remat)
    spec = encoder_spec(encoder, (32, 32, 3), projector, feature_layer=0); encoder_from_spec(spec)
    is_vit(spec['model'])

An encoder is a Flax module called as encoder(images, train=...) -> float32 features [B, F].
"""
from __future__ import annotations

import jax.numpy as jnp

from simclr_jax.core.errors import ConfigError

from simclr_jax.models.resnet import ARCHITECTURES, DTYPES, ResNet, make_resnet, resolve_dtype, resolve_stem
from simclr_jax.models.vit import VIT_ARCHITECTURES, ViT, make_vit

MODELS = tuple(ARCHITECTURES) + tuple(VIT_ARCHITECTURES)


def is_vit(model: str) -> bool:
  return model in VIT_ARCHITECTURES


def make_encoder(model: str = 'resnet18', width: float = 1.0, dtype: str = 'float32', stem: str = 'cifar',
                 patch_size: int = 4, image_size: int = 32, remat: bool = False) -> ResNet | ViT:
  """An encoder by name (MODELS); dtype may be 'auto'. A ResNet reads stem ('cifar' or
  'imagenet'), a ViT patch_size and image_size (what its position embeddings are learned for);
  remat recomputes each block (residual block, transformer block) in the backward pass."""
  if is_vit(model):
    return make_vit(model, width, DTYPES[resolve_dtype(dtype)], patch_size, image_size, remat)
  return make_resnet(model, width, dtype, stem, remat)


def encoder_for(model: str, width: float, dtype: str, stem: str, image_shape, patch_size: int = 4,
                remat: bool = False):
  """The encoder of a run on images of image_shape (a ResNet's stem 'auto' resolved for their size)."""
  if is_vit(model) and image_shape[0] % patch_size:
    raise ConfigError(f'config.patch_size={patch_size} is invalid: the images are {image_shape[0]} px; use a '
                      'divisor of their size (a ViT cuts whole patches), or set image_size')
  return make_encoder(model, width, dtype, resolve_stem(stem, image_shape[0]), patch_size, image_shape[0], remat)


def encoder_spec(encoder, image_shape, projector=None, feature_layer: int = 0) -> dict:
  """What rebuilds an encoder elsewhere, saved with every checkpoint: {'model', 'width', 'stem'
  ('patch' for a ViT), 'dtype' (resolved), 'image_shape', 'feature_layer', 'projector': {'dims',
  'norm', 'last_norm'} or None}, and a ViT's 'patch_size'."""
  head = None if projector is None else {'dims': list(projector.dims), 'norm': projector.norm,
                                         'last_norm': projector.last_norm}
  spec = {'model': encoder.architecture, 'width': encoder.width,
          'stem': 'patch' if isinstance(encoder, ViT) else encoder.stem,
          'dtype': jnp.dtype(encoder.dtype).name, 'image_shape': list(image_shape),
          'feature_layer': feature_layer, 'projector': head}
  if isinstance(encoder, ViT):
    spec['patch_size'] = encoder.patch_size
  return spec


def encoder_from_spec(spec: dict):
  return make_encoder(spec['model'], spec['width'], spec['dtype'], spec['stem'], spec.get('patch_size', 4),
                      spec['image_shape'][0])
