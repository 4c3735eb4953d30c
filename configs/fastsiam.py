"""FastSiam pretraining of a CIFAR ResNet-18 (simclr_jax/methods/fastsiam.py).

    python -m simclr_jax.main --config=configs/fastsiam.py --workdir=runs/fastsiam

The recipe of lightly's CIFAR-10 benchmark (lightly-ai/lightly, benchmarks/imagenet/cifar10's
cifar10_benchmark.py, whose 200-epoch table at batch 128 puts FastSiam first with kNN 90.6): four
views with FastSiamTransform's settings (crop scale 0.2-1, colour jitter 0.4/0.4/0.4/0.1 with
probability 0.8, grey 0.2, flip 0.5, no blur, ImageNet's normalisation), SimSiam's heads
(projector 2048-2048-2048 with BatchNorm, the last without affine; predictor 2048-512-2048), SGD
at learning rate 0.06 without batch scaling, momentum 0.9, weight decay 5e-4, a cosine over the
run without warm-up, batch 128. lightly decays every parameter; this project leaves biases and
BatchNorm out of the weight decay, as for every method.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'fastsiam')
  c.projection_dims = (2048, 2048, 2048)
  c.predictor_dims = (512, 2048)
  c.num_views = 4
  c.predictor_constant_lr = False
  c.optimizer = 'sgd'
  c.learning_rate = 0.06
  c.lr_scaling = 'none'
  c.warmup_epochs = 0.0
  c.weight_decay = 5e-4
  c.batch_size = 128
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.mean = (0.485, 0.456, 0.406)
  c.augment.std = (0.229, 0.224, 0.225)
  return c
