"""SimCLR (Chen et al. 2020): NT-Xent over the projections of both views of the global batch.

    configs/pretrain.py (the PyTorch write-up's recipe), configs/pretrain_v2.py (SimCLR v2's head)
"""
from __future__ import annotations

from simclr_jax import models
from simclr_jax.models.losses import nt_xent
from simclr_jax.methods.base import Method, fail


class SimCLR(Method):
  NAME = 'simclr'
  FIELDS = {'temperature': 0.5, 'clamp_similarity': False, 'projector_norm': False}
  PER_VIEW_BATCHNORM = False  # both views as one batch, as the PyTorch reference and google-research/simclr

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    if not config.temperature > 0:
      fail('temperature', config.temperature, 'it must be greater than 0')

  def projector(self, dtype) -> models.MLPHead:
    """Dense-ReLU-...-Dense (the write-up, PyTorch's default initialisation as Flax's), or with
    projector_norm SimCLR v2's head: each layer's Dense without bias and its kernel drawn from
    N(0, 0.01^2) (google-research/simclr, tf2/model.py's LinearLayer: RandomNormal(stddev=0.01)),
    then BatchNorm (the last one without centring), ReLU between layers."""
    norm = self.config['projector_norm']
    return models.MLPHead(tuple(self.config['projection_dims']), norm=norm,
                          last_norm='scale' if norm else 'none', dtype=dtype, kernel_std=0.01 if norm else 0.0)

  def loss(self, model, out, state, views, step):
    loss = nt_xent(out['projection'], self.config['temperature'], self.config['clamp_similarity'])
    return loss, state, {}


METHOD = SimCLR
