"""Writes a PNG grid: each row is an image and its two SimCLR views, made by the training step's code.

    python scripts/show_augmentations.py --out=augmentations.png --dataset=cifar10_jpeg \
        --data_dir=../shared/data/tfds --num=8
    python scripts/show_augmentations.py --out=mine.png --dataset=folder:/data/pets --image_size=96
    python scripts/show_augmentations.py --out=byol.png --config=configs/byol.py   # asymmetric views
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


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
  from simclr_jax.data import augment, sources
  from simclr_jax.config_base import load_config_file

  config = load_config_file(args.config)
  settings = augment.settings_from_config(config.augment)
  second = augment.settings_from_config(config.augment, config.get('view2'))  # asymmetric views
  ds = sources.load(args.dataset, args.data_dir, train_limit=args.num, image_size=args.image_size)
  originals = ds.train.images[:args.num]
  views = np.asarray(jax.jit(augment.pair_views, static_argnums=(2, 3))(
      jax.random.PRNGKey(args.seed), jnp.asarray(originals), settings, second))
  views = views * np.asarray(settings.std) + np.asarray(settings.mean)  # undo the normalisation to show
  fig, axes = plt.subplots(args.num, 3, figsize=(4.5, 1.5 * args.num))
  for i in range(args.num):
    for j, (img, title) in enumerate(((originals[i] / 255.0, 'image'), (views[2 * i], 'view 1'),
                                      (views[2 * i + 1], 'view 2'))):
      axes[i, j].imshow(np.clip(img, 0, 1), interpolation='nearest')
      axes[i, j].axis('off')
      if i == 0:
        axes[i, j].set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
