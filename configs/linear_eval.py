"""Linear evaluation of a frozen pretrained encoder (encoder weights and BatchNorm statistics never change).

    python -m simclr_jax.main --config=configs/linear_eval.py --workdir=runs/linear \\
        --config.init_from=runs/pretrain
    ... --config.protocol=augmented   # train a linear head with augmentation for config.epochs

protocol 'features' (default): embed the splits once without augmentation and fit a multinomial
logistic regression on the frozen features, its weight decay chosen on a held-out tenth of the
training split (config.evals.linear): seconds. protocol 'augmented': SGD on a linear head over
the frozen encoder with random crops and flips, as the SimCLR paper's linear evaluation does.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('linear_eval')
  c.epochs = 100
  c.batch_size = 512
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.lr_scaling = 'linear'
  c.warmup_epochs = 0.0
  c.weight_decay = 0.0
  return c
