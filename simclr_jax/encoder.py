"""A trained encoder in your own code, and its weights as a portable safetensors file.

    encoder = simclr_jax.load_encoder('runs/pretrain')   # any pretraining or classifier workdir
    features = encoder.embed(images_uint8)               # [N, F] float32, inference-mode BatchNorm
    simclr_jax.export_encoder('runs/pretrain', 'encoder.safetensors')
    encoder = simclr_jax.load_encoder('encoder.safetensors')

The safetensors file holds float32 arrays named by their Flax path, 'params/<module>/<leaf>' and
'batch_stats/<module>/<leaf>' (README, "Portable weights", maps them onto torchvision's ResNet),
and in its metadata the architecture and input: format, model, width, stem, dtype, image_shape,
mean, std, feature_dim (values JSON-encoded).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import augment, checkpoint, models
from simclr_jax.errors import UserError


@dataclasses.dataclass
class Encoder:
  """The encoder module, its variables, the normalisation it was trained with and its input size."""
  module: models.ResNet
  variables: dict
  config: dict
  image_shape: tuple | None = None  # (H, W, 3) of the training images, when known

  @property
  def feature_dim(self) -> int:
    return int(jax.eval_shape(self.apply, jax.ShapeDtypeStruct((1,) + self._shape(), jnp.float32)).shape[-1])

  def _shape(self) -> tuple:
    return tuple(self.image_shape) if self.image_shape else (32, 32, 3)

  def apply(self, images: jax.Array) -> jax.Array:
    """Features of normalised float images [B, H, W, 3]."""
    return self.module.apply(self.variables, images, train=False)

  def embed(self, images_uint8, batch_size: int = 1000) -> np.ndarray:
    """Features of uint8 images [N, H, W, 3], normalised as in training, computed in batches."""
    images = self.check_images(images_uint8)
    if len(images) == 0:
      return np.zeros((0, self.feature_dim), np.float32)
    out = [np.asarray(self._embed(jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)

  def check_images(self, images) -> np.ndarray:
    """The images as a numpy array, or a UserError naming what differs from uint8 [N, H, W, 3]."""
    want = f'uint8 [N, {self._shape()[0]}, {self._shape()[1]}, 3]'
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise UserError(f'Encoder.embed takes {want} pixels (0-255), as in training; got {images.dtype}: '
                      'convert with (x * 255).round().astype(np.uint8) if your images are floats in [0, 1]')
    if images.ndim != 4 or images.shape[-1] != 3:
      raise UserError(f'Encoder.embed takes {want} images; got shape {images.shape}: stack a batch, '
                      'put channels last (x.transpose(0, 2, 3, 1)) and give greyscale images 3 channels')
    if self.image_shape and tuple(images.shape[1:]) != tuple(self.image_shape):
      raise UserError(f'Encoder.embed takes {want} images, the size it was trained on; got '
                      f'{images.shape[1]}x{images.shape[2]}: resize them first')
    return images

  @functools.cached_property
  def _embed(self):
    aug = augment.AugmentSettings(mean=tuple(self.config['augment']['mean']),
                                  std=tuple(self.config['augment']['std']))
    return jax.jit(lambda x: self.apply(augment.eval_view(x, aug)))


FORMAT = 'simclr_jax.encoder/1'
ARCHITECTURE_KEYS = ('model', 'width', 'stem', 'dtype')


def load_encoder(path: str) -> Encoder:
  """Loads an encoder from a .safetensors file written by export_encoder, or from the newest
  checkpoint under `path` (a workdir, its checkpoints/ folder or one step folder)."""
  if path.endswith('.safetensors') or os.path.isfile(path):
    return _load_safetensors(path)
  variables, meta = checkpoint.restore_encoder(path, role='load_encoder path')
  config = dict(meta['config'])
  shape = tuple(meta['image_shape']) if meta.get('image_shape') else None
  config['stem'] = models.resolve_stem(config.get('stem', 'cifar'), shape[0] if shape else 32)
  module = models.make_encoder(config['model'], config['width'], config['dtype'], config['stem'])
  return Encoder(module, jax.tree.map(jnp.asarray, variables), config, shape)


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, name + '/'))
    else:
      out[name] = np.ascontiguousarray(np.asarray(value, np.float32))
  return out


def _unflatten(flat: dict) -> dict:
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def export_encoder(workdir: str, path: str) -> str:
  """Writes the encoder of workdir's newest checkpoint to `path` (.safetensors); returns path."""
  from safetensors.numpy import save_file
  encoder = load_encoder(workdir)
  metadata = {k: encoder.config[k] for k in ARCHITECTURE_KEYS}
  metadata.update(format=FORMAT, image_shape=list(encoder.image_shape or ()),
                  mean=list(encoder.config['augment']['mean']),
                  std=list(encoder.config['augment']['std']), feature_dim=encoder.feature_dim)
  tensors = _flatten({'params': encoder.variables['params'],
                      'batch_stats': encoder.variables['batch_stats']})
  save_file(tensors, path, metadata={k: json.dumps(v) for k, v in metadata.items()})
  return path


def _load_safetensors(path: str) -> Encoder:
  from safetensors import safe_open
  if not os.path.isfile(path):
    raise UserError(f'load_encoder path {path!r} does not exist: point it at a .safetensors file '
                    'written by simclr_jax.export_encoder, or at a simclr_jax workdir')
  try:
    with safe_open(path, framework='numpy') as f:
      metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
      flat = {name: f.get_tensor(name) for name in f.keys()}
  except Exception as e:
    raise UserError(f'load_encoder path {path!r} is not a readable safetensors file '
                    f'({type(e).__name__}): export it again with simclr_jax.export_encoder') from None
  if metadata.get('format') != FORMAT:
    raise UserError(f'{path!r} is not a simclr_jax encoder (metadata format '
                    f'{metadata.get("format")!r}, expected {FORMAT!r}): export it with '
                    'simclr_jax.export_encoder')
  variables = _unflatten(flat)
  config = {k: metadata[k] for k in ARCHITECTURE_KEYS}
  config['augment'] = {'mean': tuple(metadata['mean']), 'std': tuple(metadata['std'])}
  module = models.make_encoder(config['model'], config['width'], config['dtype'], config['stem'])
  shape = tuple(metadata['image_shape']) or None
  return Encoder(module, jax.tree.map(jnp.asarray, variables), config, shape)
