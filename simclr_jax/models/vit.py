"""Vision Transformers (Dosovitskiy et al. 2021) as encoders: patches embedded by a strided
convolution, a class token, learned position embeddings, pre-norm blocks (LayerNorm, multi-head
self-attention, LayerNorm, a GELU MLP), a final LayerNorm, and the class token's features out.
The layout is timm's VisionTransformer (global_pool='token'), so trained_encoder writes its state dict.

    encoder = ViT(dim=192, depth=12, heads=3, patch_size=4, image_size=32)   # vit_tiny on CIFAR
    encoder = make_vit('vit_small', width=1.0, dtype='float32', patch_size=4, image_size=32)
    features = encoder.apply(variables, images)                      # [B, dim] float32
    tokens = encoder.apply(variables, images, keep=ids, tokens=True)  # MAE: visible patches only

`width` scales the embedding (heads kept, so the head size shrinks with it), as it scales a
ResNet's channels; tests run narrow ones. The position embeddings are learned for image_size;
images of another size get them resized (bicubic over the patch grid, as timm resamples them).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# name -> (embedding dim, blocks, heads); vit_nano is this project's smallest, for quick tests.
VIT_ARCHITECTURES = {
    'vit_nano': (192, 4, 3),
    'vit_tiny': (192, 12, 3),
    'vit_small': (384, 12, 6),
    'vit_base': (768, 12, 12),
}

LAYER_NORM_EPSILON = 1e-6  # timm's and big_vision's
dense = nn.initializers.xavier_uniform()  # MAE's and big_vision's initialisation of linear layers
# The patch embedding as MAE initialises it: Xavier-uniform of the kernel seen as a [p*p*3, D] matrix
# (Flax's xavier_uniform would count the p x p receptive field in the fan-out too).
patch_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=-1)


class Attention(nn.Module):
  """Multi-head self-attention with one qkv projection (timm's layout: [q heads | k heads | v
  heads] along the output), the softmax in float32."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=dense, name='qkv')(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.heads, d // self.heads), 2, 0)
    logits = jnp.einsum('bqhc,bkhc->bhqk', q, k).astype(jnp.float32) / jnp.sqrt(d // self.heads).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhc->bqhc', weights, v).reshape(b, n, d)
    return nn.Dense(d, dtype=self.dtype, kernel_init=dense, name='proj')(out)


class Block(nn.Module):
  """x + attn(norm1(x)), then x + mlp(norm2(x)) with a GELU (exact, as torch's) MLP of mlp_ratio x dim."""
  heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32, name=name)
    x = x + Attention(self.heads, self.dtype, name='attn')(norm('norm1')(x).astype(self.dtype)).astype(x.dtype)
    h = nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, kernel_init=dense, name='fc1')(
        norm('norm2')(x).astype(self.dtype))
    h = nn.Dense(d, dtype=self.dtype, kernel_init=dense, name='fc2')(nn.gelu(h, approximate=False))
    return x + h.astype(x.dtype)


def resize_grid(pos, grid: int):
  """Patch position embeddings [1, g*g, D] resized to [1, grid*grid, D] (bicubic over the grid)."""
  g, d = int(round(pos.shape[1] ** 0.5)), pos.shape[-1]
  if g == grid:
    return pos
  return jax.image.resize(pos.reshape(1, g, g, d), (1, grid, grid, d), 'bicubic').reshape(1, grid * grid, d)


def patchify(images, patch: int):
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order, each (row, col, channel)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return jnp.swapaxes(x, 2, 3).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class ViT(nn.Module):
  """A Vision Transformer encoder; returns the class token's features [B, dim] in float32 after
  the final LayerNorm. keep [B, n] (patch indices) runs only those patches (MAE's visible ones);
  tokens=True returns every token [B, 1 + n, dim] (class token first). `train` is accepted for
  the encoders' common call and changes nothing (no BatchNorm, no dropout)."""
  dim: int
  depth: int
  heads: int
  patch_size: int = 4
  image_size: int = 32
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  architecture: str = ''   # its name in VIT_ARCHITECTURES
  width: float = 1.0       # as make_vit scaled dim (encoder_spec records it)
  remat: bool = False      # each block's activations recomputed in the backward pass (jax.checkpoint)

  @nn.compact
  def __call__(self, x, train: bool = True, keep=None, tokens: bool = False):
    p = self.patch_size
    x = nn.Conv(self.dim, (p, p), (p, p), padding='VALID', dtype=self.dtype, kernel_init=patch_init,
                name='patch_embed')(x.astype(self.dtype))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d).astype(jnp.float32)
    grid = self.image_size // p
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (1, 1 + grid * grid, d), jnp.float32)
    cls = self.param('cls_token', nn.initializers.normal(0.02), (1, 1, d), jnp.float32)  # MAE's
    if gh != gw:
      raise ValueError(f'ViT takes square images; got a {gh} x {gw} patch grid')
    x = x + resize_grid(pos[:, 1:], gh)
    if keep is not None:
      x = jnp.take_along_axis(x, keep[..., None], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(cls + pos[:, :1], (b, 1, d)), x], axis=1)
    block = nn.remat(Block) if self.remat else Block  # the same parameters, by the same names
    for i in range(self.depth):
      x = block(self.heads, self.mlp_ratio, self.dtype, name=f'blocks_{i}')(x)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32, name='norm')(x).astype(jnp.float32)
    return x if tokens else x[:, 0]


def make_vit(model: str, width: float, dtype, patch_size: int, image_size: int, remat: bool = False) -> ViT:
  """A ViT by name (VIT_ARCHITECTURES) with its embedding scaled by width (rounded to a multiple of
  its heads); dtype a jnp dtype; remat recomputes each block in the backward pass."""
  dim, depth, heads = VIT_ARCHITECTURES[model]
  dim = max(heads, int(round(dim * width / heads)) * heads)
  return ViT(dim=dim, depth=depth, heads=heads, patch_size=patch_size, image_size=image_size, dtype=dtype,
             architecture=model, width=width, remat=remat)
