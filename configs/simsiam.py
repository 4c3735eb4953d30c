"""SimSiam pretraining of a CIFAR ResNet-18 (simclr_jax/methods/simsiam.py).

    python -m simclr_jax.main --config=configs/simsiam.py --workdir=runs/simsiam

The recipe of solo-learn's scripts/pretrain/cifar/simsiam.yaml (vturrisi/solo-learn): projector
2048-2048-2048 with BatchNorm (the last without affine), predictor 2048-512-2048, SGD with
momentum 0.9, learning rate 0.5 x batch/256, weight decay 1e-5, batch 256, 10 warmup epochs
and the predictor's learning rate constant at the peak (the paper's section 4.4, solo-learn's
static_lr);
augmentations/symmetric_weak.yaml: strengths 0.4/0.4/0.4/0.1, Gaussian blur with probability 0.5,
no solarisation. solo-learn trains 1,000 epochs; this project's default is 200.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'simsiam')
  c.projection_dims = (2048, 2048, 2048)
  c.predictor_dims = (512, 2048)
  c.optimizer = 'sgd'
  c.learning_rate = 0.5
  c.weight_decay = 1e-5
  c.batch_size = 256
  c.augment.blur_prob = 0.5
  return c
