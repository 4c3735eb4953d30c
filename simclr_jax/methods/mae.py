"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): a ViT encodes a random
quarter of each image's patches, a light Transformer decoder rebuilds the pixels of the other
three quarters from the encoded ones and a shared mask token, and the loss is the mean squared
error on the masked patches only, each patch's target normalised by its own mean and variance
(norm_pix_loss, the paper's Table 1d). Recipe: configs/mae.py (solo-learn's CIFAR recipe).

    python -m simclr_jax.main --config=configs/mae.py --workdir=runs/mae
    python -m simclr_jax.main --config=configs/finetune.py --config.model=vit_small \\
        --config.init_from=runs/mae --config.layer_decay=0.75 --config.optimizer=adamw ...

Masking: every step draws uniform noise over each image's N patches from a key of that image's
(Method.inputs splits the step's key over the batch, beside the view) and keeps the
(1 - mask_ratio) N patches of smallest noise (the paper's per-sample shuffle); the encoder runs on
them and the class token, and the decoder puts them back in place among mask tokens. Each image
keeps its key wherever it goes, so the masks are the same on any number of devices and in any
number of chunks (config.batch_chunks). The encoder's
features for evaluation and downstream stages are the class token of the whole, unmasked image.
Needs a ViT (config.model vit_*); the decoder's position embeddings are learned (the paper's are
fixed sine-cosine ones). decoder_dim is the decoder's width for an encoder at width 1: config.width
scales it as it scales the encoder's embedding (heads and depth kept), so a narrow test run has a
narrow decoder (vit_nano at width 0.125: 8 blocks of 64 rather than 512).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.data import views as views_lib
from simclr_jax.methods.base import Field, Method, fail, positive
from simclr_jax.models.vit import LAYER_NORM_EPSILON, Block, dense

MASK_STREAM = 0x4D4145  # folded into the step's key for the masks ('MAE')


def fraction_below_one(value) -> str:
  return '' if 0 < value < 1 else 'use a fraction in (0, 1), such as 0.75 (the paper\'s)'


def masked_patch_loss(reconstruction, target, mask, norm_pix: bool = True):
  """Mean over masked patches (mask 1) of the mean squared error over a patch's pixels between
  reconstruction and target [B, N, P]; with norm_pix each target patch is first normalised by its
  mean and variance (+1e-6), as the paper's norm_pix_loss; the variance is the unbiased one
  (ddof 1), as the authors' code takes torch's Tensor.var by default."""
  target = target.astype(jnp.float32)
  if norm_pix:
    mean, var = jnp.mean(target, axis=-1, keepdims=True), jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((reconstruction.astype(jnp.float32) - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def shuffle(noise, keep: int):
  """(indices of the `keep` patches of smallest noise [B, keep], each patch's place in the
  shuffled order [B, N] (argsort of the shuffle), mask [B, N]: 1 where a patch is hidden)."""
  order = jnp.argsort(noise, axis=1)
  restore = jnp.argsort(order, axis=1)
  return order[:, :keep], restore, (restore >= keep).astype(jnp.float32)


class Decoder(nn.Module):
  """The visible tokens (class token first) embedded to dim, mask tokens appended and the whole
  unshuffled to the patch order, learned position embeddings, depth pre-norm blocks, a LayerNorm
  and a linear map to each patch's pixels: [B, N, pixels] (the class token's row dropped)."""
  dim: int
  depth: int
  heads: int
  pixels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, restore):
    x = nn.Dense(self.dim, kernel_init=dense, name='embed')(tokens)
    b, n = restore.shape
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, self.dim), jnp.float32)
    patches = jnp.concatenate([x[:, 1:], jnp.broadcast_to(mask_token, (b, n + 1 - x.shape[1], self.dim))], axis=1)
    patches = jnp.take_along_axis(patches, restore[..., None], axis=1)
    pos = self.param('decoder_pos_embed', nn.initializers.normal(0.02), (1, 1 + n, self.dim), jnp.float32)
    x = jnp.concatenate([x[:, :1], patches], axis=1) + pos
    for i in range(self.depth):
      x = Block(self.heads, dtype=self.dtype, name=f'blocks_{i}')(x)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32, name='norm')(x)
    return nn.Dense(self.pixels, kernel_init=dense, name='pred')(x)[:, 1:]


class MAEModel(nn.Module):
  """The ViT encoder and the decoder. Without noise: {'features', 'projection'} (both the class
  token of the whole image: what the monitors and evaluators read). With noise [B, N]: the
  encoder on the kept patches, and also 'reconstruction' [B, N, p*p*3] and 'mask' [B, N]. An
  online probe reads the features (stop-gradient), as in PretrainModel: in training those of the
  visible quarter of the patches, in evaluation those of the whole image (no second forward pass
  per step for it)."""
  encoder: models.ViT
  decoder_dim: int
  decoder_depth: int
  decoder_heads: int
  mask_ratio: float
  probe_classes: int = 0
  projector: None = None     # what the stages read of a pretraining model: no projector,
  feature_layer: int = 0     # the encoder's features

  @nn.compact
  def __call__(self, x, train: bool = True, noise=None):
    out, p = {}, self.encoder.patch_size
    if noise is None and self.is_initializing():  # the decoder's parameters are made too
      noise = jnp.zeros((x.shape[0], (x.shape[1] // p) * (x.shape[2] // p)))
    if noise is None:
      h = self.encoder(x, train=train)
    else:
      keep, restore, out['mask'] = shuffle(noise, max(1, int(noise.shape[1] * (1 - self.mask_ratio))))  # MAE's count
      tokens = self.encoder(x, train=train, keep=keep, tokens=True)
      h = tokens[:, 0]
      out['reconstruction'] = Decoder(self.decoder_dim, self.decoder_depth, self.decoder_heads, p * p * x.shape[-1],
                                      self.encoder.dtype, name='decoder')(tokens, restore)
    out.update(features=h, projection=h)
    if self.probe_classes:
      out['probe_logits'] = nn.Dense(self.probe_classes, dtype=jnp.float32, name='online_probe')(
          jax.lax.stop_gradient(h))
    return out


class MAE(Method):
  NAME = 'mae'
  PAPER = 'He et al. 2022, Masked Autoencoders Are Scalable Vision Learners'
  FIELDS = {'mask_ratio': Field(0.75, fraction_below_one, defines_run=True,
                                doc="the share of each image's patches hidden"),
            'decoder_dim': Field(512, positive, defines_run=True,
                                 doc="the decoder's width for an encoder at width 1 (config.width scales it, heads "
                                     "kept)"),
            'decoder_depth': Field(8, positive, defines_run=True, doc="the decoder's blocks"),
            'decoder_heads': Field(16, positive, defines_run=True, doc="the decoder's attention heads"),
            'norm_pix_loss': Field(True,
                                   doc="each target patch normalised by its own mean and variance (the paper's Table "
                                       "1d)")}

  def __init__(self, config, total_steps: int = 1):
    super().__init__(config, total_steps)
    # The decoder's width follows the encoder's (config.width scales both; heads kept, as models.vit scales them).
    dim, heads = self.config['decoder_dim'], self.config['decoder_heads']
    self.decoder_width = max(heads, int(round(dim * config.width / heads)) * heads)

  @classmethod
  def cross_check(cls, config) -> None:
    if not models.is_vit(config.model):
      fail('model', config.model, f'MAE masks a Vision Transformer\'s patches: use one of '
           f'{", ".join(models.VIT_ARCHITECTURES)} (with patch_size, 4 for 32 px images)')
    if config.decoder_dim % config.decoder_heads:
      fail('decoder_dim', config.decoder_dim, f'use a multiple of decoder_heads={config.decoder_heads}')
    if config.finetune_from_head_layer:
      fail('finetune_from_head_layer', config.finetune_from_head_layer, 'MAE has no projector: use 0')

  def views(self, first, second) -> tuple:
    """One view of each image (the paper's random resized crop and flip: configs/mae.py)."""
    return (views_lib.Crops('global', 0, (first,)),)

  def inputs(self, first, second):
    """The view, and the key of each image's mask ('mask_keys' [1, B, 2]: cut with the batch)."""
    make = super().inputs(first, second)
    return lambda key, images: {**make(key, images), 'mask_keys': jax.random.split(
        jax.random.fold_in(key, MASK_STREAM), images.shape[0])[None]}

  def describe(self) -> list:
    c = self.config
    return [f'decoder {c["decoder_depth"]} x {self.decoder_width} ({c["decoder_heads"]} heads; decoder_dim '
            f'{c["decoder_dim"]} at width 1)']

  def make_model(self, encoder, probe_classes: int = 0) -> MAEModel:
    c = self.config
    return MAEModel(encoder=encoder, decoder_dim=self.decoder_width, decoder_depth=c['decoder_depth'],
                    decoder_heads=c['decoder_heads'], mask_ratio=c['mask_ratio'], probe_classes=probe_classes)

  def forward(self, model, variables: dict, inputs: dict):
    x = inputs['global'][0]
    grid = x.shape[1] // model.encoder.patch_size
    noise = jax.vmap(lambda key: jax.random.uniform(key, (grid * grid,)))(inputs['mask_keys'][0])
    out = model.apply(variables, x, train=True, noise=noise)
    return {'global': jax.tree.map(lambda a: a[None], out)}, variables['batch_stats']

  def loss(self, model, out, state, views, step, params=None):
    o = out['global']
    target = models.patchify(views['global'][0], model.encoder.patch_size)
    return masked_patch_loss(o['reconstruction'][0], target, o['mask'][0], self.config['norm_pix_loss']), state, {}


METHOD = MAE
