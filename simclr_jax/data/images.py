"""Decoding images into uint8 RGB arrays of one size, in parallel, counting what could not be read.

    batch = decode_all(sources, size=96)   # sources: file paths, encoded bytes or arrays
    batch.images                           # uint8 [N, 96, 96, 3]; zeros where an image is unreadable
    batch.bad, batch.upscaled              # (index, reason) of the unreadable ones; a count

Each image is EXIF-rotated, converted to RGB (greyscale, RGBA, palette and CMYK alike), fully
decoded, then resized and centre-cropped as torchvision's Resize(size) and CenterCrop(size) do on a
PIL image: the shorter side to `size` and the longer to int(size * longer / shorter) (truncated),
bilinear with antialiasing (Pillow's BILINEAR filter widens with the scale when shrinking), then
the crop offset int(round((side - size) / 2)). size 0 keeps the decoded size, which must then be
the same for every image.
"""
from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simclr_jax.core.errors import summary

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
  """(new width, new height) of torchvision's Resize(size): the shorter side to size, the longer
  to int(size * longer / shorter)."""
  if width <= height:
    return size, int(size * height / width)
  return int(size * width / height), size


def crop_offset(side: int, size: int) -> int:
  """torchvision's CenterCrop offset along one side."""
  return int(round((side - size) / 2.0))


def decode(source, size: int = 0) -> tuple[np.ndarray, bool]:
  """(uint8 [H, W, 3], whether it was upscaled) of one image."""
  from PIL import Image, ImageOps
  if isinstance(source, np.ndarray):
    image = Image.fromarray(source)
  else:
    image = Image.open(source if isinstance(source, str) else io.BytesIO(source))
    image = ImageOps.exif_transpose(image)
  if image.mode != 'RGB':
    image = image.convert('RGBA').convert('RGB') if image.mode == 'P' else image.convert('RGB')
  upscaled = False
  if size:
    w, h = image.size
    upscaled = min(w, h) < size
    new_w, new_h = resize_shape(w, h, size)
    if (new_w, new_h) != (w, h):
      image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = crop_offset(new_w, size), crop_offset(new_h, size)
    image = image.crop((left, top, left + size, top + size))
  return np.asarray(image, dtype=np.uint8), upscaled


@dataclasses.dataclass
class Decoded:
  images: np.ndarray              # uint8 [len(sources), H, W, 3]; zeros for the unreadable ones
  bad: list                       # (index, reason) of the sources that could not be decoded
  upscaled: int                   # how many images were smaller than size


def decode_all(sources, size: int = 0, workers: int = 0) -> Decoded:
  """decode over a list of sources in a thread pool (Pillow releases the GIL while decoding)."""
  def one(source):
    try:
      return decode(source, size)
    except Exception as e:  # any unreadable file: reported, not fatal here
      return summary(e, 120)

  workers = workers or min(16, os.cpu_count() or 1)
  with ThreadPoolExecutor(max_workers=workers) as pool:
    results = list(pool.map(one, sources, chunksize=64))
  bad = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
  good = [r[0] for r in results if not isinstance(r, str)]
  shapes = {x.shape for x in good}
  if len(shapes) > 1:
    raise ValueError(f'images of several sizes ({", ".join(str(s[:2]) for s in sorted(shapes)[:3])}, '
                     '...): set --config.image_size to resize them on load')
  shape = shapes.pop() if shapes else (size, size, 3)
  images = np.zeros((len(results),) + shape, np.uint8)
  for i, r in enumerate(results):
    if not isinstance(r, str):
      images[i] = r[0]
  return Decoded(images, bad, sum(r[1] for r in results if not isinstance(r, str)))
