"""Writes a PNG grid: each row is an image and the views its config's method trains on (every group
of crops, each crop at its own size), made by the training step's code.

    python scripts/show_augmentations.py --out=augmentations.png --dataset=cifar10_jpeg \
        --data_dir=../shared/data/tfds --num=8
    python scripts/show_augmentations.py --out=mine.png --dataset=folder:/data/pets --image_size=96
    python scripts/show_augmentations.py --out=byol.png --config=configs/byol.py   # asymmetric views
    python scripts/show_augmentations.py --out=multi.png --config=CONFIG_OF_A_MULTI_CROP_METHOD
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def spec_settings(spec, group: str, k: int):
  """The AugmentSettings of crop k of a group of a data.views spec."""
  return next(g for g in spec if g.name == group).settings[k]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='augmentations.png')
  p.add_argument('--dataset', default='cifar10')
  p.add_argument('--data_dir', default='')
  p.add_argument('--num', type=int, default=8)
  p.add_argument('--image_size', type=int, default=0, help='resize on load (needed for a folder)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--config', default=os.path.join(os.path.dirname(__file__), '..', 'configs', 'pretrain.py'),
                 help='the config whose augment fields are used')
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  from simclr_jax import methods
  from simclr_jax.config_base import load_config_file
  from simclr_jax.data import augment, registry, views as views_lib

  config = load_config_file(args.config)
  settings = augment.settings_from_config(config.augment)
  second = augment.settings_from_config(config.augment, config.get('view2'))  # asymmetric views
  spec = methods.get(config.method)(config).views(settings, second) if config.get('method') else \
      views_lib.two_views(settings, second)
  ds = registry.load(args.dataset, args.data_dir, train_limit=args.num, image_size=args.image_size)
  originals = ds.train.images[:args.num]
  made = jax.jit(views_lib.make_views, static_argnums=2)(jax.random.PRNGKey(args.seed), jnp.asarray(originals), spec)
  columns = [('image', None, None)] + [(f'{g.name} {k + 1}' + (f' ({g.size} px)' if g.size else ''), g.name, k)
                                       for g in spec for k in range(g.count)]
  fig, axes = plt.subplots(args.num, len(columns), figsize=(1.5 * len(columns), 1.5 * args.num), squeeze=False)
  for i in range(args.num):
    for j, (title, group, k) in enumerate(columns):
      if group is None:
        img = originals[i] / 255.0
      else:  # undo the normalisation to show
        img = np.asarray(made[group][k, i]) * np.asarray(spec_settings(spec, group, k).std) + \
            np.asarray(spec_settings(spec, group, k).mean)
      axes[i, j].imshow(np.clip(img, 0, 1), interpolation='nearest')
      axes[i, j].axis('off')
      if i == 0:
        axes[i, j].set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
