"""VICReg pretraining of a CIFAR ResNet-18 (simclr_jax/methods/vicreg.py).

    python -m simclr_jax.main --config=configs/vicreg.py --workdir=runs/vicreg

The recipe of solo-learn's scripts/pretrain/cifar/vicreg.yaml (vturrisi/solo-learn): expander
2048-2048-2048 (Linear-BN-ReLU, the last a plain Linear), invariance, variance and covariance
weights 25, 25 and 1, LARS with learning rate 0.3 x batch/256, eta 0.02 in solo-learn's form (its
solo/utils/lars.py with the recipe's clip_lr: True: the trust ratio eta |p| / (|g| + wd |p|),
divided by the learning rate and capped at 1, the learning rate outside the momentum buffer), weight decay 1e-4
(biases and BatchNorm excluded), batch 256, 10 warmup epochs; its inline augmentations: crop
scale (0.2, 1.0), saturation 0.2, solarisation 0.1 on both views, no blur. solo-learn trains 1,000
epochs; this project's default is 200.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'vicreg')
  c.projection_dims = (2048, 2048, 2048)
  c.sim_weight, c.var_weight, c.cov_weight = 25.0, 25.0, 1.0
  c.optimizer = 'lars'
  c.lars_eta = 0.02
  c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum = 'sum_of_norms', True, False  # solo-learn's LARS
  c.learning_rate = 0.3
  c.weight_decay = 1e-4
  c.batch_size = 256
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.saturation = 0.2
  c.augment.solarize_prob = 0.1
  return c
