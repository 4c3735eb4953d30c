"""A trained encoder in your own code, and its weights as a portable safetensors file.

    encoder = simclr_jax.load_encoder('runs/pretrain')   # any pretraining or classifier workdir
    features = encoder.embed(images_uint8)               # [N, F] float32, inference-mode BatchNorm
    simclr_jax.export_encoder('runs/pretrain', 'encoder.safetensors')                  # Flax names
    simclr_jax.export_encoder('runs/pretrain', 'resnet.safetensors', layout='torchvision')
    simclr_jax.export_encoder('runs/mae', 'vit.safetensors', layout='timm')       # a ViT, for timm
    encoder = simclr_jax.load_encoder('encoder.safetensors')
    encoder.export('resnet.safetensors', layout='torchvision')                    # the same, from an Encoder

The encoder is the ResNet or ViT and, for a run whose finetune_from_head_layer is K > 0, the first K
layers of its projector (models.Backbone). layout='flax' names the float32 arrays by their path in
its variables ('params/encoder/stem_conv/kernel', 'batch_stats/projector/norm_0/mean', ...) and
carries the architecture and input in its metadata (JSON values: format, model, width, stem,
dtype, image_shape, mean, std, feature_dim, feature_layer, projector, checksums); load_encoder
reads it back. layout='torchvision' writes torchvision's ResNet state-dict names with OIHW
kernels and, in its metadata 'torchvision', the block, layers and stem that build the network
in torchvision (a width other than 1 is refused: torchvision's widths are fixed);
layout='timm' writes a ViT under timm's VisionTransformer names (cls_token, pos_embed,
patch_embed.proj.weight, blocks.0.attn.qkv.weight, ..., norm.weight) and, in its metadata
'timm', the keyword arguments of timm.models.vision_transformer.VisionTransformer that load it
(docs/portable-weights.md has the code for both). Every
file carries a CRC-32 of each array, checked on load; it is written to a temporary file beside
the target and renamed, so a failed or interrupted export leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import stat
import tempfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import models
from simclr_jax.data import augment
from simclr_jax.train import checkpoint
from simclr_jax.core import interrupts
from simclr_jax.core.errors import UserError

FORMAT = 'simclr_jax.encoder/2'
LAYOUTS = ('flax', 'torchvision', 'timm')


@dataclasses.dataclass
class Encoder:
  """The encoder module (models.Backbone), its variables, its architecture (`spec`, as
  models.encoder_spec gives it) and the normalisation it was trained with."""
  module: models.Backbone
  variables: dict
  spec: dict
  mean: tuple
  std: tuple

  @property
  def image_shape(self) -> tuple:
    return tuple(self.spec['image_shape'])

  @property
  def feature_dim(self) -> int:
    x = jax.ShapeDtypeStruct((1,) + self.image_shape, jnp.float32)
    return int(jax.eval_shape(lambda v, x: self.module.apply(v, x, train=False), self.variables, x).shape[-1])

  def embed(self, images_uint8, batch_size: int = 1000) -> np.ndarray:
    """Features of uint8 images [N, H, W, 3], normalised as in training, computed in batches."""
    images = self.check_images(images_uint8)
    if len(images) == 0:
      return np.zeros((0, self.feature_dim), np.float32)
    out = [np.asarray(self._infer(self.variables, jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)

  def check_images(self, images) -> np.ndarray:
    """The images as a numpy array, or a UserError naming what differs from uint8 [N, H, W, 3]."""
    h, w = self.image_shape[:2]
    want = f'uint8 [N, {h}, {w}, 3]'
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise UserError(f'Encoder.embed takes {want} pixels (0-255), as in training; got {images.dtype}: '
                      'convert with (x * 255).round().astype(np.uint8) if your images are floats in [0, 1]')
    if images.ndim != 4 or images.shape[-1] != 3:
      raise UserError(f'Encoder.embed takes {want} images; got shape {images.shape}: stack a batch, '
                      'put channels last (x.transpose(0, 2, 3, 1)) and give greyscale images 3 channels')
    if tuple(images.shape[1:]) != self.image_shape:
      raise UserError(f'Encoder.embed takes {want} images, the size it was trained on; got '
                      f'{images.shape[1]}x{images.shape[2]}: resize them first')
    return images

  def export(self, path, layout: str = 'flax', where: str = 'the encoder') -> str:
    """Writes the encoder to `path` (.safetensors) under layout's names (export_encoder's); returns
    path. where: what the errors call it."""
    return _export(self, path, layout, where)

  @functools.cached_property
  def _infer(self):
    settings = augment.AugmentSettings(mean=tuple(self.mean), std=tuple(self.std))
    return augment.inference(functools.partial(self.module.apply, train=False), settings)


def _backbone(spec: dict, head_layer: int) -> models.Backbone:
  encoder = models.encoder_from_spec(spec)
  return models.Backbone(encoder, models.head_layers(spec.get('projector'), head_layer, encoder.dtype))


def _as_path(path, role: str) -> str:
  """path as a str (a str or an os.PathLike), or a UserError naming what was passed."""
  if isinstance(path, (str, os.PathLike)):
    return os.fspath(path)
  raise UserError(f'{role} is {path!r} ({type(path).__name__}): pass the path of a simclr_jax workdir, one of '
                  'its checkpoints/<step> folders or a .safetensors file written by export_encoder')


def _check_head_layer(head_layer, spec: dict, where: str) -> int:
  """head_layer as an int within the run's projector, or a UserError naming its depth."""
  layers = len((spec.get('projector') or {}).get('dims', ()))
  hidden = max(layers - 1, 0)
  if not isinstance(head_layer, int) or isinstance(head_layer, bool) or not 0 <= head_layer <= hidden:
    raise UserError(f'head_layer={head_layer!r}: the projector of {where} has {layers} layers, of which {hidden} '
                    f'hidden: use a head_layer from 0 (the encoder) to {hidden}, or None for the run\'s own '
                    f'finetune_from_head_layer ({spec.get("feature_layer", 0)})')
  return head_layer


def load_encoder(path, head_layer: int | None = None) -> Encoder:
  """Loads an encoder from a .safetensors file written by export_encoder, or from the newest
  checkpoint under `path` (a workdir, its checkpoints/ folder or one step folder). head_layer:
  the projector layers to include (default: the run's finetune_from_head_layer)."""
  role = 'load_encoder path'
  path = _as_path(path, role)
  if os.path.isfile(path) or (path.endswith('.safetensors') and not os.path.isdir(path)):
    if head_layer is not None:
      raise UserError(f'head_layer={head_layer!r} with the file {path!r}: an export holds the layers it was '
                      'exported with; pass head_layer to export_encoder instead')
    return _load_safetensors(path)
  meta = checkpoint.read_meta(checkpoint.find_checkpoint(path, role), role)
  spec = dict(meta.get('model') or {})
  k = spec.get('feature_layer', 0) if head_layer is None else _check_head_layer(head_layer, spec, repr(path))
  variables, meta = checkpoint.restore_encoder(path, role=role, head_layers=k)
  spec['feature_layer'] = k
  if k:
    spec['projector'] = {**spec['projector'], 'dims': spec['projector']['dims'][:k]}
  aug = meta['config']['augment']
  return Encoder(_backbone(spec, k), jax.tree.map(jnp.asarray, variables), spec, tuple(aug['mean']),
                 tuple(aug['std']))


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


def _crc(array: np.ndarray) -> str:
  return f'{zlib.crc32(np.ascontiguousarray(array).tobytes()):08x}'


_TORCH_BN = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def torchvision_state_dict(variables: dict, spec: dict) -> dict:
  """The encoder's variables under torchvision ResNet state-dict names: conv kernels OIHW,
  BatchNorm weight, bias, running_mean, running_var and num_batches_tracked (0)."""
  basic = models.ARCHITECTURES[spec['model']][0] == 'basic'
  shortcut = 2 if basic else 3  # the index of the 1x1 projection shortcut's Conv_ and BatchNorm_

  def name(module: str) -> str:
    if module == 'stem_conv':
      return 'conv1'
    if module == 'stem_norm':
      return 'bn1'
    block, layer = module.split('/')
    s, b = block[len('stage'):].split('_block')
    kind, index = layer.split('_')
    index = int(index)
    prefix = f'layer{s}.{int(b) - 1}'
    if index == shortcut:
      return f'{prefix}.downsample.{0 if kind == "Conv" else 1}'
    return f'{prefix}.{"conv" if kind == "Conv" else "bn"}{index + 1}'

  out = {}
  for collection in ('params', 'batch_stats'):
    for path, value in _flatten(variables[collection]['encoder']).items():
      module, leaf = path.rsplit('/', 1)
      if leaf == 'kernel':
        out[f'{name(module)}.weight'] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
      else:
        out[f'{name(module)}.{_TORCH_BN[leaf]}'] = value
        if leaf == 'mean':
          out[f'{name(module)}.num_batches_tracked'] = np.zeros((), np.int64)
  return out


_TIMM_MODULES = {'patch_embed': 'patch_embed.proj', 'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2'}


def timm_state_dict(variables: dict, spec: dict) -> dict:
  """A ViT's parameters under timm's VisionTransformer state-dict names: linear weights [out, in],
  the patch embedding's kernel OIHW, LayerNorm scales as weights."""
  out = {}
  for path, value in _flatten(variables['params']['encoder']).items():
    *modules, leaf = path.split('/')
    if not modules:  # cls_token, pos_embed
      out[leaf] = value
      continue
    name = '.'.join(_TIMM_MODULES.get(m, m.replace('blocks_', 'blocks.')) for m in modules)
    if leaf == 'kernel':
      out[f'{name}.weight'] = np.ascontiguousarray(value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T)
    else:
      out[f'{name}.{"weight" if leaf == "scale" else "bias"}'] = value
  return out


def torchvision_builder(spec: dict, where: str) -> dict:
  """What builds the ResNet of spec in torchvision (the export's 'torchvision' metadata):
  {'block': 'BasicBlock' or 'Bottleneck', 'layers': blocks per stage, 'stem': 'cifar' or
  'imagenet'} for torchvision.models.ResNet(getattr(torchvision.models.resnet, block), layers);
  the CIFAR stem replaces conv1 by a 3x3 stride-1 convolution and maxpool by an identity. A width
  other than 1 is refused with one line: torchvision's ResNet has fixed widths."""
  if spec['width'] != 1:
    raise UserError(f'{where} holds a {spec["model"]} at width {spec["width"]:g}, and torchvision\'s ResNet has '
                    'the fixed widths of width 1 (64 to 512 channels, 2048 for a ResNet-50): export it with '
                    'layout=\'flax\' (load_encoder reads it, in JAX) or pretrain at --config.width=1')
  block, layers = models.ARCHITECTURES[spec['model']]
  return {'block': 'BasicBlock' if block == 'basic' else 'Bottleneck', 'layers': list(layers), 'stem': spec['stem']}


def timm_builder(spec: dict, module) -> dict:
  """The keyword arguments of timm.models.vision_transformer.VisionTransformer that build the ViT
  of spec (the export's 'timm' metadata): VisionTransformer(**meta['timm']) loads the export."""
  vit = module.encoder
  return {'img_size': int(spec['image_shape'][0]), 'patch_size': int(vit.patch_size), 'embed_dim': int(vit.dim),
          'depth': int(vit.depth), 'num_heads': int(vit.heads), 'mlp_ratio': 4.0, 'qkv_bias': True,
          'class_token': True, 'global_pool': 'token', 'num_classes': 0}


def export_encoder(workdir, path, layout: str = 'flax', head_layer: int | None = None) -> str:
  """Writes the encoder of workdir's newest checkpoint to `path` (.safetensors); returns path.
  head_layer: the projector layers to include, as load_encoder takes it (default: the run's
  finetune_from_head_layer); layout='torchvision' holds the ResNet alone (head_layer 0)."""
  if layout not in LAYOUTS:
    raise UserError(f'export_encoder layout {layout!r} is unknown: use one of {", ".join(LAYOUTS)}')
  workdir, path = _as_path(workdir, 'export_encoder workdir'), _as_path(path, 'export_encoder path')
  if os.path.isfile(workdir):
    raise UserError(f'export_encoder workdir {workdir!r} is a file: pass the workdir of a run (an export is '
                    'already portable; load it with load_encoder)')
  target = _check_target(path)
  load_encoder(workdir, head_layer).export(target, layout, where=repr(workdir))
  return path


def _export(encoder: Encoder, path: str, layout: str, where: str) -> str:
  """Encoder.export: the arrays under the layout's names, the metadata, written atomically."""
  from safetensors.numpy import save
  if layout not in LAYOUTS:
    raise UserError(f'export layout {layout!r} is unknown: use one of {", ".join(LAYOUTS)}')
  target = _check_target(_as_path(path, 'export path'))
  spec = encoder.spec
  vit = models.is_vit(spec['model'])
  if layout != 'flax' and vit != (layout == 'timm'):
    raise UserError(f'{where} holds a {spec["model"]}: export it with layout=\'{"timm" if vit else "torchvision"}\' '
                    f'(layout={layout!r} is for {"ResNets" if vit else "ViTs"}), or layout=\'flax\'')
  builder = {}
  if layout != 'flax':
    if spec.get('feature_layer'):
      raise UserError(f'{where} includes {spec["feature_layer"]} projector layers (its finetune_from_head_layer), '
                      f'which {layout}\'s network does not have: export the encoder alone with '
                      f'export_encoder(..., layout={layout!r}, head_layer=0), or the layers too with layout=\'flax\'')
    builder = {'timm': timm_builder(spec, encoder.module)} if vit else {'torchvision': torchvision_builder(spec, where)}
    tensors = (timm_state_dict if vit else torchvision_state_dict)(encoder.variables, spec)
  else:
    tensors = _flatten({c: encoder.variables[c] for c in ('params', 'batch_stats')})
  metadata = {k: spec[k] for k in ('model', 'width', 'stem', 'dtype', 'image_shape', 'feature_layer', 'projector',
                                   'patch_size') if k in spec}
  metadata.update(format=FORMAT, layout=layout, mean=list(encoder.mean), std=list(encoder.std),
                  feature_dim=encoder.feature_dim, checksums={k: _crc(v) for k, v in tensors.items()}, **builder)
  data = save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})
  folder = os.path.dirname(target)
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(target)}.', suffix='.tmp', dir=folder)
  with interrupts.temporary(tmp):
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)
  return path


def _check_target(path: str) -> str:
  """The export's target: a regular file (replaced) or a new name in an existing folder."""
  target = os.path.abspath(path)
  folder = os.path.dirname(target)
  if os.path.isdir(target):
    raise UserError(f'export path {path!r} is a folder: name a file in it, such as {os.path.join(path, "encoder.safetensors")!r}')
  if os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
    raise UserError(f'export path {path!r} exists and is not a regular file (a device, a link or a pipe): '
                    'name a new file or a regular one to replace')
  if not os.path.isdir(folder):
    raise UserError(f'export path {path!r}: the folder {folder!r} does not exist: create it first')
  if not os.access(folder, os.W_OK):
    raise UserError(f'export path {path!r}: the folder {folder!r} is not writable: choose another path')
  return target


REQUIRED = ('model', 'width', 'stem', 'dtype', 'image_shape', 'mean', 'std', 'feature_layer', 'projector',
            'checksums')


def _load_safetensors(path: str) -> Encoder:
  from safetensors import safe_open
  if not os.path.isfile(path):
    raise UserError(f'load_encoder path {path!r} does not exist: point it at a .safetensors file '
                    'written by simclr_jax.export_encoder, or at a simclr_jax workdir')
  again = 'export it again with simclr_jax.export_encoder'
  try:
    with safe_open(path, framework='numpy') as f:
      raw = f.metadata() or {}
      flat = {name: f.get_tensor(name) for name in f.keys()}
  except Exception as e:
    raise UserError(f'load_encoder path {path!r} is not a readable safetensors file '
                    f'({type(e).__name__}): {again}') from None
  try:
    metadata = {k: json.loads(v) for k, v in raw.items()}
  except ValueError:
    raise UserError(f'{path!r} is a safetensors file but not a simclr_jax export (its metadata is not the JSON '
                    f'export_encoder writes): load it with safetensors itself, or {again}') from None
  if metadata.get('format') != FORMAT:
    older = str(metadata.get('format', '')).startswith('simclr_jax.encoder/')
    raise UserError(f'{path!r} is not a simclr_jax encoder of this version (metadata format '
                    f'{metadata.get("format")!r}, expected {FORMAT!r}{"; format 1 padded strided convolutions differently" if older else ""}): {again}')
  if metadata.get('layout') != 'flax':
    raise UserError(f'{path!r} holds {metadata.get("layout")}\'s names (layout={metadata.get("layout")!r}), for PyTorch: '
                    'load_encoder reads the layout=\'flax\' export')
  missing = [k for k in REQUIRED if k not in metadata]
  if missing:
    raise UserError(f'{path!r} lacks the metadata {", ".join(missing)}: {again}')
  for name, value in flat.items():
    if metadata['checksums'].get(name) != _crc(value):
      raise UserError(f'{path!r} is corrupt: the tensor {name} does not match its checksum: {again}')
  spec = {k: metadata[k] for k in ('model', 'width', 'stem', 'dtype', 'image_shape', 'feature_layer', 'projector',
                                   'patch_size') if k in metadata}
  try:
    module = _backbone(spec, spec['feature_layer'])
    expected = jax.eval_shape(functools.partial(module.init, train=False), jax.random.PRNGKey(0),
                              jnp.zeros((1,) + tuple(spec['image_shape']), jnp.float32))
  except Exception as e:
    raise UserError(f'{path!r} describes an encoder this version cannot build ({type(e).__name__}: {e}): '
                    f'{again}') from None
  want = {k: tuple(v.shape) for k, v in _flatten(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), expected)).items()}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  if want != got:
    wrong = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
    raise UserError(f'{path!r} does not hold the arrays of a {spec["model"]} of width {spec["width"]:g} '
                    f'({wrong[0]} is missing, extra or of another shape): {again}')
  return Encoder(module, jax.tree.map(jnp.asarray, _unflatten(flat)), spec, tuple(metadata['mean']),
                 tuple(metadata['std']))
