"""Writes a split of a TFDS dataset as a folder of image files, for trying --config.dataset=folder:PATH.

    python scripts/make_image_folder.py --dataset=cifar10_jpeg --data_dir=../shared/data/tfds \
        --split='train[:10000]' --size=96 --out=/tmp/images/unlabelled --unlabelled
    python scripts/make_image_folder.py ... --split='train[10000:12000]' --out=/tmp/images/labelled/train

Labelled output has one sub-folder per class (CLASS/NNNNN.jpg); --unlabelled writes loose files.
--size > 0 resizes each image (bilinear) to size x size first. JPEG quality 90.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dataset', default='cifar10_jpeg')
  p.add_argument('--data_dir', default='')
  p.add_argument('--split', default='train')
  p.add_argument('--size', type=int, default=0)
  p.add_argument('--out', required=True)
  p.add_argument('--unlabelled', action='store_true')
  args = p.parse_args(argv)
  from PIL import Image
  from simclr_jax.data import registry
  ds = registry.load(args.dataset, args.data_dir, train_split=args.split, test_split='')
  names = ds.class_names or tuple(str(c) for c in range(ds.num_classes))
  for k, (pixels, label) in enumerate(zip(ds.train.images, ds.train.labels)):
    folder = args.out if args.unlabelled or label < 0 else os.path.join(args.out, names[label])
    os.makedirs(folder, exist_ok=True)
    image = Image.fromarray(pixels)
    if args.size:
      image = image.resize((args.size, args.size), Image.BILINEAR)
    image.save(os.path.join(folder, f'{k:06d}.jpg'), quality=90)
  print(f'{len(ds.train.images)} images in {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
