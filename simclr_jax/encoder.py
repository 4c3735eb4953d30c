"""A trained encoder in your own code.

    encoder = simclr_jax.load_encoder('runs/pretrain')   # any pretraining or classifier workdir
    features = encoder.embed(images_uint8)               # [N, 512] float32, inference-mode BatchNorm
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import augment, checkpoint, models


@dataclasses.dataclass
class Encoder:
  """The encoder module, its variables and the normalisation it was trained with."""
  module: models.ResNet
  variables: dict
  config: dict

  def apply(self, images: jax.Array) -> jax.Array:
    """Features of normalised float images [B, H, W, 3]."""
    return self.module.apply(self.variables, images, train=False)

  def embed(self, images_uint8, batch_size: int = 1000) -> np.ndarray:
    """Features of uint8 images [N, H, W, 3], normalised as in training, computed in batches."""
    images = np.asarray(images_uint8)
    out = [np.asarray(self._embed(jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  @functools.cached_property
  def _embed(self):
    aug = augment.augment_params_from_config(self.config['augment'])
    return jax.jit(lambda x: self.apply(augment.eval_view(x, aug)))


def load_encoder(path: str) -> Encoder:
  """Loads the encoder of the newest checkpoint under `path` (a workdir, checkpoints/ or a step folder)."""
  variables, config = checkpoint.restore_encoder(path)
  module = models.make_encoder(config['model'], config['width'], config['dtype'])
  return Encoder(module, jax.tree.map(jnp.asarray, variables), config)
