"""ResNets with a CIFAR or an ImageNet stem, padded as torchvision pads them, and what describes
one for the stages that rebuild it (models.encoders does, for every family).

    encoder = make_resnet('resnet18', width=1.0, dtype='auto', stem='cifar')
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ARCHITECTURES = {
    'resnet10': ('basic', (1, 1, 1, 1)),   # the smallest: quick tests
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
}


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


DTYPE_CHOICES = ('auto',) + tuple(DTYPES)


# Checkpoints and exported files of another format are refused with one line (checkpoint.py).
# 2: convolutions padded as torchvision pads them (one pixel on each side of a 3x3 kernel, at any
# stride; three for the 7x7 stem; one for the max-pool), heads as MLPHead layers.
FORMAT_VERSION = 2



def resolve_dtype(dtype: str, backend: str | None = None) -> str:
  """'auto' becomes bfloat16 on GPU and TPU and float32 on the CPU (where bfloat16 convolutions
  are emulated and slow); other names are returned as they are."""
  if dtype != 'auto':
    return dtype
  backend = backend or jax.default_backend()
  return 'float32' if backend == 'cpu' else 'bfloat16'



def _pad(kernel: int) -> tuple:
  """torchvision's padding of a k x k convolution: (k - 1) / 2 pixels on every side, whatever the
  stride (Flax's 'SAME' would pad a stride-2 3x3 convolution by 0 before and 1 after)."""
  p = (kernel - 1) // 2
  return ((p, p), (p, p))



class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=_pad(3))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3))(y)
    y = self.norm()(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), (self.strides, self.strides), padding=_pad(1))(x)
      x = self.norm()(x)
    return nn.relu(x + y)



class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4), with a projection shortcut where shapes differ."""
  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1), padding=_pad(1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=_pad(3))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters * 4, (1, 1), padding=_pad(1))(y))
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides), padding=_pad(1))(x)
      x = self.norm()(x)
    return nn.relu(x + y)


STEMS = ('cifar', 'imagenet')


CIFAR_STEM_MAX_SIZE = 64  # stem 'auto': the CIFAR stem for images of this size or less



def resolve_stem(stem: str, image_size: int) -> str:
  """'auto' becomes 'cifar' for images of 64 px or less and 'imagenet' for larger ones."""
  if stem != 'auto':
    return stem
  return 'cifar' if image_size <= CIFAR_STEM_MAX_SIZE else 'imagenet'



class ResNet(nn.Module):
  """ResNet encoder with a global average pool; stem 'cifar' (3x3 stride 1, no max-pool, for
  small images) or 'imagenet' (7x7 stride 2, then a 3x3 stride-2 max-pool).

  Returns float32 features of size 512 * width (2048 * width for bottleneck).
  """
  stage_sizes: Sequence[int]
  block: str = 'basic'
  width: float = 1.0
  dtype: Any = jnp.float32
  stem: str = 'cifar'
  architecture: str = ''     # its name in ARCHITECTURES
  remat: bool = False        # each block's activations recomputed in the backward pass (jax.checkpoint)

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
    block_cls = nn.remat(block_cls) if self.remat else block_cls  # the same parameters, by the same names
    base = max(1, int(round(64 * self.width)))
    if self.stem == 'imagenet':
      x = conv(base, (7, 7), (2, 2), padding=_pad(7), name='stem_conv')(x.astype(self.dtype))
      x = nn.relu(norm(name='stem_norm')(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3))
    else:
      x = conv(base, (3, 3), padding=_pad(3), name='stem_conv')(x.astype(self.dtype))
      x = nn.relu(norm(name='stem_norm')(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = block_cls(base * 2**stage, strides, conv, norm, name=f'stage{stage + 1}_block{b + 1}')(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))



def make_resnet(model: str = 'resnet18', width: float = 1.0, dtype: str = 'float32',
                stem: str = 'cifar', remat: bool = False) -> ResNet:
  """Builds a ResNet by name (ARCHITECTURES); dtype may be 'auto', stem 'cifar' or 'imagenet'
  (resolve 'auto' with resolve_stem first); remat recomputes each block in the backward pass."""
  block, stages = ARCHITECTURES[model]
  return ResNet(stage_sizes=stages, block=block, width=width, dtype=DTYPES[resolve_dtype(dtype)],
                stem=stem, architecture=model, remat=remat)
