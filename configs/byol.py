"""BYOL pretraining of a CIFAR ResNet-18 (simclr_jax/methods/byol.py).

    python -m simclr_jax.main --config=configs/byol.py --workdir=runs/byol

The recipe of solo-learn's scripts/pretrain/cifar/byol.yaml (vturrisi/solo-learn): projector
4096-256 and predictor 4096-256 (Linear-BN-ReLU-Linear), EMA target with tau cosine-scheduled from
0.99 to 1.0 over training, LARS with learning rate 1.0 x batch/256, eta 0.02 in solo-learn's form (its
solo/utils/lars.py with the recipe's clip_lr: True: the trust ratio eta |p| / (|g| + wd |p|),
divided by the learning rate and capped at 1, the learning rate outside the momentum buffer), weight decay 1e-5
(biases and BatchNorm excluded), batch 256, 10 warmup epochs; augmentations/asymmetric.yaml:
saturation 0.2, solarisation 0.0 on the first view and 0.2 on the second, no blur. solo-learn
trains 1,000 epochs; this project's default is 200.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'byol')
  c.projection_dims = (4096, 256)
  c.predictor_dims = (4096, 256)
  c.base_tau, c.final_tau = 0.99, 1.0
  c.optimizer = 'lars'
  c.lars_eta = 0.02
  c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum = 'sum_of_norms', True, False  # solo-learn's LARS
  c.learning_rate = 1.0
  c.weight_decay = 1e-5
  c.batch_size = 256
  c.augment.saturation = 0.2
  c.view2.solarize_prob = 0.2
  return c
