"""ResNets (CIFAR or ImageNet stem) with torchvision's padding, MLP heads, the pretraining model
(encoder, projector, optional predictor and online probe) and the classifier.

Every model returns a dict of named outputs so callers read what they need:

    model = PretrainModel(encoder=make_encoder('resnet18'), projector=MLPHead((2048, 128)))
    out = model.apply(variables, images, train=False)  # {'features', 'projection'}
    model.apply(target_variables, images, method=PretrainModel.target)  # the EMA branch's outputs
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


def encoder_for(model: str, width: float, dtype: str, stem: str, image_shape) -> 'ResNet':
  """The encoder of a run on images of image_shape (stem 'auto' resolved for their size)."""
  return make_encoder(model, width, dtype, resolve_stem(stem, image_shape[0]))


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

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
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


def make_encoder(model: str = 'resnet18', width: float = 1.0, dtype: str = 'float32',
                 stem: str = 'cifar') -> ResNet:
  """Builds a ResNet by name (ARCHITECTURES); dtype may be 'auto', stem 'cifar' or 'imagenet'
  (resolve 'auto' with resolve_stem first)."""
  block, stages = ARCHITECTURES[model]
  return ResNet(stage_sizes=stages, block=block, width=width, dtype=DTYPES[resolve_dtype(dtype)],
                stem=stem, architecture=model)


def encoder_spec(encoder: ResNet, image_shape, projector: 'MLPHead | None' = None, feature_layer: int = 0) -> dict:
  """What rebuilds an encoder elsewhere (downstream stages, load_encoder), saved with every
  checkpoint: {'model', 'width', 'stem', 'dtype' (resolved), 'image_shape', 'feature_layer',
  'projector': {'dims', 'norm', 'last_norm'} or None}."""
  head = None if projector is None else {'dims': list(projector.dims), 'norm': projector.norm,
                                         'last_norm': projector.last_norm}
  return {'model': encoder.architecture, 'width': encoder.width, 'stem': encoder.stem,
          'dtype': jnp.dtype(encoder.dtype).name, 'image_shape': list(image_shape),
          'feature_layer': feature_layer, 'projector': head}


def encoder_from_spec(spec: dict) -> ResNet:
  return make_encoder(spec['model'], spec['width'], spec['dtype'], spec['stem'])


class MLPHead(nn.Module):
  """Dense layers `dims`; ReLU after every layer but the last. With norm, each layer's Dense has
  no bias and is followed by BatchNorm (the last one by `last_norm`).

  last_norm: 'none' (a Dense with bias: SimCLR, BYOL), 'full' (BatchNorm as the other layers),
  'scale' (BatchNorm without centring, as SimCLR v2's last head layer) or 'plain' (BatchNorm
  without scale or centring: MoCo v3, SimSiam).
  Returns (output, hiddens): hiddens[k] is the output of layer k - 1 after its ReLU, hiddens[0]
  the input, so hiddens[K] is what fine-tuning from head layer K starts from.
  """
  dims: Sequence[int]
  norm: bool = False
  last_norm: str = 'none'
  dtype: Any = jnp.float32
  relu_last: bool = False     # the first K layers of a projector inside a classifier
  kernel_std: float = 0.0     # > 0: Dense kernels drawn from N(0, kernel_std^2); 0: Flax's default (LeCun normal)

  @nn.compact
  def __call__(self, h, train: bool = True):
    hiddens = [h]
    init = nn.initializers.normal(self.kernel_std) if self.kernel_std > 0 else nn.linear.default_kernel_init
    for i, d in enumerate(self.dims):
      last = i == len(self.dims) - 1
      kind = self.last_norm if last else ('full' if self.norm else 'none')
      h = nn.Dense(d, use_bias=kind == 'none', dtype=self.dtype, kernel_init=init, name=f'dense_{i}')(h)
      if kind != 'none':
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         use_bias=kind == 'full', use_scale=kind != 'plain', name=f'norm_{i}')(h)
      if not last or self.relu_last:
        h = nn.relu(h)
      hiddens.append(h.astype(jnp.float32))
    return h.astype(jnp.float32), hiddens


class PretrainModel(nn.Module):
  """Encoder, projector and (for some methods) a predictor; outputs {'features': [B, F],
  'projection': [B, D], 'prediction': [B, D] (with a predictor)}. `features` is the encoder's
  output, or the projector's hidden layer `feature_layer` > 0 (what a fine-tune from that layer
  starts from; the monitors evaluate it).

  With probe_classes > 0 it also holds the online linear probe (params['online_probe']), a
  linear classifier on stop-gradient features: out['probe_logits'] [B, probe_classes]. No
  gradient reaches the rest of the model from it. With target=True only the branch an EMA
  target network runs: {'projection'} from the encoder and projector.
  """
  encoder: ResNet
  projector: MLPHead
  predictor: MLPHead | None = None
  probe_classes: int = 0
  feature_layer: int = 0

  @nn.compact
  def __call__(self, x, train: bool = True, target: bool = False):
    z, hiddens = self.projector(self.encoder(x, train=train), train=train)
    if target:
      return {'projection': z}
    out = {'features': hiddens[self.feature_layer], 'projection': z}
    if self.predictor is not None:
      out['prediction'] = self.predictor(z, train=train)[0]
    if self.probe_classes:
      out['probe_logits'] = nn.Dense(self.probe_classes, dtype=jnp.float32, name='online_probe')(
          jax.lax.stop_gradient(out['features']))
    return out


class Backbone(nn.Module):
  """What downstream stages take from a pretraining run: the ResNet and, for a fine-tune from
  head layer K (SimCLR v2), the first K layers of its projector, named 'encoder' and 'projector'
  as in every model here so their variables carry over. Returns float32 features."""
  encoder: ResNet
  projector: MLPHead | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = self.encoder(x, train=train)
    return h if self.projector is None else self.projector(h, train=train)[0]


def head_layers(spec: dict | None, k: int, dtype) -> MLPHead | None:
  """The first k layers of a projector described by spec ({'dims', 'norm', 'last_norm'}, as a
  checkpoint stores it), each followed by its ReLU; None for k = 0."""
  if not k:
    return None
  return MLPHead(tuple(spec['dims'][:k]), norm=spec['norm'], last_norm='full' if spec['norm'] else 'none',
                 relu_last=True, dtype=dtype)


class Classifier(nn.Module):
  """A ResNet (and, from a pretraining run, its projector's first layers) plus a linear head;
  outputs {'features', 'logits'} (logits in float32). Parameters: 'encoder', 'projector' (head
  layers, when any), 'head'.

  With frozen_encoder the encoder and head layers run in inference mode (BatchNorm statistics
  are read, never updated) and no gradient flows into them.
  """
  encoder: ResNet
  num_classes: int
  projector: MLPHead | None = None
  frozen_encoder: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    inner = train and not self.frozen_encoder
    h = self.encoder(x, train=inner)
    if self.projector is not None:
      h = self.projector(h, train=inner)[0]
    if self.frozen_encoder:
      h = jax.lax.stop_gradient(h)
    return {'features': h, 'logits': nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(h)}


def init_variables(model: nn.Module, seed: int, image_shape) -> dict:
  """Float32 params and batch_stats of a model (PretrainModel or Classifier) on the default device.
  The initialiser runs once, so on a CPU it is compiled without LLVM's optimisations, in a
  quarter of the time (about 2 s instead of 9 for a ResNet-10)."""
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  key = jax.random.PRNGKey(seed)
  init = jax.jit(functools.partial(model.init, train=False)).lower(key, x)
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  return init.compile(compiler_options=options)(key, x)
