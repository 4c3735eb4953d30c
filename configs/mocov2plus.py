"""MoCo v2+ pretraining of a CIFAR ResNet-18 (simclr_jax/methods/mocov2plus.py).

    python -m simclr_jax.main --config=configs/mocov2plus.py --workdir=runs/mocov2plus

The recipe of solo-learn's scripts/pretrain/cifar/mocov2plus.yaml (vturrisi/solo-learn):
projector 2048-256 (Linear-ReLU-Linear), a queue of 32,768 keys per view, temperature 0.2, the
momentum rising from 0.99 to 0.999 on a cosine, SGD with momentum 0.9 at 0.3 x batch/256, weight
decay 1e-4, batch 256, 10 warm-up epochs then a cosine; augmentations/symmetric_weak.yaml (strengths
0.4/0.4/0.4/0.1, Gaussian blur with probability 0.5, no solarisation). solo-learn trains 1,000
epochs (online linear 92.94 on CIFAR-10); this project's default is 200.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'mocov2plus')
  c.projection_dims = (2048, 256)
  c.queue_size = 32768
  c.temperature = 0.2
  c.base_tau = 0.99
  c.final_tau = 0.999
  c.optimizer = 'sgd'
  c.learning_rate = 0.3
  c.weight_decay = 1e-4
  c.batch_size = 256
  c.augment.blur_prob = 0.5
  return c
