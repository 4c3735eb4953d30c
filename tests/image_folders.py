"""Folders of images made from cifar10_jpeg for the folder tests (tests/data/test_folders.py) and the
v2 workflow on a folder (tests/stages/test_distill.py).

    root = make_folder(tmp_path / 'pets', source, 200)              # class folders, a broken file
    root = make_folder(tmp_path / 'pics', source, 120, labelled=False, corrupt=0)
"""
from PIL import Image

FORMATS = ('.jpg', '.png', '.webp', '.bmp')



def _write(path, pixels, k):
  """Image k in a format, mode and size that varies with k: greyscale, RGBA, palette, and sizes
  above and below 32 px, non-square ones included."""
  image = Image.fromarray(pixels)
  if k % 7 == 1:
    image = image.resize((48, 40))
  elif k % 7 == 2:
    image = image.resize((64, 64))
  elif k % 50 == 3:
    image = image.resize((24, 24))  # smaller than image_size: upscaled, counted
  mode = {4: 'L', 5: 'RGBA', 6: 'P'}.get(k % 9)
  if mode:
    image = image.convert(mode)
  ext = FORMATS[k % len(FORMATS)]
  if ext == '.jpg' and image.mode in ('RGBA', 'P'):
    ext = '.png'
  image.save(str(path) + ext)


def make_folder(root, source, n, labelled=True, splits=False, corrupt=1, start=0):
  """n training images of `source` under root (by class, optionally in train/ and test/), written
  at mixed sizes, modes and formats, with `corrupt` unreadable files and a text file beside them."""
  names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
  for k in range(start, start + n):
    label = int(source.train.labels[k])
    split = ('test' if k % 5 == 0 else 'train') if splits else ''
    folder = root / split / (names[label] if labelled else '')
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f'img{k:05d}', source.train.images[k], k)
  where = root / ('train' if splits else '') / ('cat' if labelled else '')
  for c in range(corrupt):
    (where / f'broken{c}.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
  (root / 'notes.txt').write_text('not an image')
  return root
