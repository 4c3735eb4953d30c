"""Barlow Twins pretraining of a CIFAR ResNet-18 (simclr_jax/methods/barlow_twins.py).

    python -m simclr_jax.main --config=configs/barlow_twins.py --workdir=runs/barlow

The recipe of solo-learn's scripts/pretrain/cifar/barlow.yaml (vturrisi/solo-learn): projector
2048-2048-2048 (Linear-BN-ReLU, the last a plain Linear), lambda 0.0051 (solo-learn's method
default, the paper's value) and loss scale 0.1, LARS with learning rate 0.3 x batch/256, eta
0.02 in solo-learn's form (its solo/utils/lars.py with the recipe's clip_lr: True: the trust
ratio eta |p| / (|g| + wd |p|), divided by the learning rate and capped at 1, the learning rate
outside the momentum buffer), weight decay 1e-4 (biases and BatchNorm excluded), batch 256, 10 warmup epochs;
augmentations/asymmetric.yaml: saturation 0.2, solarisation only on the second view (0.2).
solo-learn trains 1,000 epochs; this project's default is 200.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'barlow_twins')
  c.projection_dims = (2048, 2048, 2048)
  c.lambd = 0.0051
  c.loss_scale = 0.1
  c.optimizer = 'lars'
  c.lars_eta = 0.02
  c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum = 'sum_of_norms', True, False  # solo-learn's LARS
  c.learning_rate = 0.3
  c.weight_decay = 1e-4
  c.batch_size = 256
  c.augment.saturation = 0.2
  c.view2.solarize_prob = 0.2
  return c
