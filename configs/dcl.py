"""DCL pretraining of a CIFAR ResNet-18 (simclr_jax/methods/dcl.py): SimCLR without the positive
in NT-Xent's denominator.

    python -m simclr_jax.main --config=configs/dcl.py --workdir=runs/dcl

The recipe of lightly's CIFAR-10 benchmark (lightly-ai/lightly, benchmarks' cifar10_benchmark.py,
whose 200-epoch table at batch 128 gives DCL kNN 84.4 beside SimCLR's 84.7): SimCLR's model with a
512-128 projector (lightly's SimCLRProjectionHead(512, 512, 128); here Dense-ReLU-Dense, lightly
puts BatchNorm after the hidden layer), DCLLoss at temperature 0.1, SimCLRTransform with colour
jitter strength 0.5 (0.4/0.4/0.4/0.1 with probability 0.8, grey 0.2, crop scale 0.08-1, flip,
no blur) and ImageNet's normalisation, SGD with momentum 0.9 at 0.06 x batch/128 (0.12 x
batch/256 here), weight decay 5e-4, a cosine over the run without warm-up, batch 128.
configs/dclw.py: the same with DCLW's weighting (sigma 0.5).
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'dcl')
  c.projection_dims = (512, 128)
  c.temperature = 0.1
  c.optimizer = 'sgd'
  c.learning_rate = 0.12
  c.warmup_epochs = 0.0
  c.weight_decay = 5e-4
  c.batch_size = 128
  c.augment.mean = (0.485, 0.456, 0.406)
  c.augment.std = (0.229, 0.224, 0.225)
  return c
