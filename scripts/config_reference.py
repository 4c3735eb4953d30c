"""Writes docs/configuration.md, the configuration reference, from the code (simclr_jax.catalog):
every field of every stage's config with its default and meaning, each method's fields with their
checks, each evaluator's fields.

    python scripts/config_reference.py            # rewrite docs/configuration.md
    python scripts/config_reference.py --check    # exit 1 if the page and the code disagree
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, 'docs', 'configuration.md')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--check', action='store_true', help='compare instead of writing')
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  from simclr_jax.catalog import configuration_reference
  text = configuration_reference()
  if args.check:
    same = os.path.exists(PAGE) and open(PAGE).read() == text
    print('docs/configuration.md matches the code' if same else
          'docs/configuration.md differs from the code: run python scripts/config_reference.py')
    return 0 if same else 1
  with open(PAGE, 'w') as f:
    f.write(text)
  print(f'wrote {PAGE}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
