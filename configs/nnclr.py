"""NNCLR pretraining of a CIFAR ResNet-18 (simclr_jax/methods/nnclr.py).

    python -m simclr_jax.main --config=configs/nnclr.py --workdir=runs/nnclr

The recipe of solo-learn's scripts/pretrain/cifar/nnclr.yaml (vturrisi/solo-learn): projector
2048-2048-256 (Linear-BN-ReLU twice, then Linear-BN), predictor 4096-256 (Linear-BN-ReLU-Linear),
a support set of 65,536 projections, temperature 0.2, LARS with learning rate 0.4 x batch/256, eta
0.02 in solo-learn's form (clip_lr: True, the learning rate outside the momentum buffer), weight
decay 1e-5 (biases and BatchNorm excluded), batch 256, 10 warm-up epochs;
augmentations/asymmetric.yaml: saturation 0.2, solarisation only on the second view (0.2), no
blur. solo-learn trains 1,000 epochs (online linear 91.88 on CIFAR-10); this project's default
is 200. The support set holds the projections of the last 1.3 epochs of CIFAR-10's 50,000
training images.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'nnclr')
  c.projection_dims = (2048, 2048, 256)
  c.predictor_dims = (4096, 256)
  c.temperature = 0.2
  c.queue_size = 65536
  c.optimizer = 'lars'
  c.lars_eta = 0.02
  c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum = 'sum_of_norms', True, False  # solo-learn's LARS
  c.learning_rate = 0.4
  c.weight_decay = 1e-5
  c.batch_size = 256
  c.augment.saturation = 0.2
  c.view2.solarize_prob = 0.2
  return c
