"""ResNets (CIFAR or ImageNet stem), the SimCLR projector with the online probe, and a linear
classifier.

Every model returns a dict of named outputs so callers read what they need:

    model = SimCLRModel(encoder=make_encoder('resnet18'))
    out = model.apply(variables, images, train=False)  # {'features', 'projection'}
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ARCHITECTURES = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
DTYPE_CHOICES = ('auto',) + tuple(DTYPES)


def resolve_dtype(dtype: str, backend: str | None = None) -> str:
  """'auto' becomes bfloat16 on GPU and TPU and float32 on the CPU (where bfloat16 convolutions
  are emulated and slow); other names are returned as they are."""
  if dtype != 'auto':
    return dtype
  backend = backend or jax.default_backend()
  return 'float32' if backend == 'cpu' else 'bfloat16'


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), (self.strides, self.strides))(x)
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
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters * 4, (1, 1))(y))
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides))(x)
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

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding='SAME')
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
    base = max(1, int(round(64 * self.width)))
    if self.stem == 'imagenet':
      x = conv(base, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name='stem_conv')(x.astype(self.dtype))
      x = nn.relu(norm(name='stem_norm')(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(base, (3, 3), name='stem_conv')(x.astype(self.dtype))
      x = nn.relu(norm(name='stem_norm')(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = block_cls(base * 2**stage, strides, conv, norm, name=f'stage{stage + 1}_block{b + 1}')(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def make_encoder(model: str = 'resnet18', width: float = 1.0, dtype: str = 'float32',
                 stem: str = 'cifar') -> ResNet:
  """Builds a ResNet by name ('resnet18', 'resnet34', 'resnet50'); dtype may be 'auto', stem
  'cifar' or 'imagenet' (resolve 'auto' with resolve_stem first)."""
  block, stages = ARCHITECTURES[model]
  return ResNet(stage_sizes=stages, block=block, width=width, dtype=DTYPES[resolve_dtype(dtype)],
                stem=stem)


class Projector(nn.Module):
  """Dense(hidden), ReLU, Dense(out): the SimCLR projection head (float32 output)."""
  dims: Sequence[int] = (2048, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    for i, d in enumerate(self.dims):
      h = nn.Dense(d, dtype=self.dtype)(h)
      if i < len(self.dims) - 1:
        h = nn.relu(h)
    return h.astype(jnp.float32)


class SimCLRModel(nn.Module):
  """Encoder plus projector; outputs {'features': [B, F], 'projection': [B, D]}.

  With probe_classes > 0 it also holds the online linear probe (params['online_probe']), a
  linear classifier on stop-gradient features: out['probe_logits'] [B, probe_classes]. No
  gradient reaches the encoder or the projector from it.
  """
  encoder: ResNet
  projection_dims: Sequence[int] = (2048, 128)
  probe_classes: int = 0

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = self.encoder(x, train=train)
    z = Projector(self.projection_dims, dtype=self.encoder.dtype, name='projector')(h)
    out = {'features': h, 'projection': z}
    if self.probe_classes:
      out['probe_logits'] = nn.Dense(self.probe_classes, dtype=jnp.float32, name='online_probe')(
          jax.lax.stop_gradient(h))
    return out


class Classifier(nn.Module):
  """Encoder plus a linear head; outputs {'features', 'logits'} (logits in float32).

  With frozen_encoder the encoder runs in inference mode (BatchNorm statistics are
  read, never updated) and no gradient flows into it.
  """
  encoder: ResNet
  num_classes: int
  frozen_encoder: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.frozen_encoder:
      h = jax.lax.stop_gradient(self.encoder(x, train=False))
    else:
      h = self.encoder(x, train=train)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(h)
    return {'features': h, 'logits': logits}


def init_variables(model: nn.Module, seed: int, image_shape) -> dict:
  """Float32 params and batch_stats of a model (SimCLRModel or Classifier) on the default device."""
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(seed), x)
