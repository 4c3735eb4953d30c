"""Pictures of a trained encoder: an embedding map (t-SNE of the test features, coloured by class)
and a retrieval grid (10 test images and their 8 nearest training images, wrong ones in red).

    python scripts/inspect_encoder.py --workdir=runs/pretrain            # PNGs into the workdir
    python scripts/inspect_encoder.py --workdir=encoder.safetensors --dataset=cifar10_jpeg \
        --data_dir=../shared/data/tfds --out=pictures
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog='\n'.join(__doc__.split('\n\n')[1:]))
  p.add_argument('--workdir', required=True, help='a simclr_jax workdir or an exported .safetensors file')
  p.add_argument('--out', default='', help='folder for the PNGs (default: the workdir)')
  p.add_argument('--dataset', default='', help='default: the run\'s labelled data (its eval_dataset when set)')
  p.add_argument('--image_size', type=int, default=0, help='default: the size the encoder was trained on')
  p.add_argument('--data_dir', default=None, help='default: the run\'s data_dir')
  p.add_argument('--max_points', type=int, default=2000, help='test points in the embedding map')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  from simclr_jax.core import interrupts
  from simclr_jax.core.errors import UserError
  interrupts.install()  # SIGTERM or SIGINT: exit 75 with one line naming what it stopped
  from simclr_jax.report.pictures import pictures_of_run
  try:
    paths = pictures_of_run(args.workdir, args.out, args.dataset, args.data_dir, args.max_points, args.seed,
                            args.image_size)
  except (UserError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for path in paths.values():
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
