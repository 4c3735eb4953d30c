"""The networks the stages train: the pretraining model (encoder, projector, optional predictor
and online probe), the backbone downstream stages take from it, and the classifier.

    model = PretrainModel(encoder=make_encoder('resnet18'), projector=MLPHead((2048, 128)))
    out = model.apply(variables, images, train=False)  # {'features', 'projection'}
    variables = init_variables(model, seed=0, image_shape=(32, 32, 3))
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.heads import MLPHead
from simclr_jax.models.resnet import ResNet

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
  variables = dict(init.compile(compiler_options=options)(key, x))
  variables.setdefault('batch_stats', {})  # a network without BatchNorm (a ViT and linear heads) has none
  return variables
