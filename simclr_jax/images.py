"""Decoding images into uint8 RGB arrays of one size, in parallel, counting what could not be read.

    batch = decode_all(sources, size=96)   # sources: file paths, encoded bytes or arrays
    batch.images                           # uint8 [N_ok, 96, 96, 3]
    batch.kept, batch.bad, batch.upscaled  # indices decoded; (index, reason) of failures; count

Each image is EXIF-rotated, converted to RGB (greyscale, RGBA, palette and CMYK alike), its
shorter side resized to `size` (bilinear, antialiased when shrinking) and centre-cropped to a
square. size 0 keeps the decoded size, which must then be the same for every image.
"""
from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simclr_jax.errors import summary

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def decode(source, size: int = 0) -> tuple[np.ndarray, bool]:
  """(uint8 [H, W, 3], whether it was upscaled) of one image."""
  from PIL import Image, ImageOps
  if isinstance(source, np.ndarray):
    image = Image.fromarray(source)
  else:
    image = Image.open(source if isinstance(source, str) else io.BytesIO(source))
    if size and image.format == 'JPEG':  # decode large JPEGs at a reduced scale, still >= size
      image.draft('RGB', (size, size))
    image = ImageOps.exif_transpose(image)
  if image.mode != 'RGB':
    image = image.convert('RGBA').convert('RGB') if image.mode == 'P' else image.convert('RGB')
  upscaled = False
  if size:
    w, h = image.size
    upscaled = min(w, h) < size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
      image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
  return np.asarray(image, dtype=np.uint8), upscaled


@dataclasses.dataclass
class Decoded:
  images: np.ndarray              # uint8 [len(kept), H, W, 3]
  kept: np.ndarray                # indices into the sources that decoded
  bad: list                       # (index, reason) of the sources that did not
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
  kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
  bad = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
  if kept:
    shapes = {results[i][0].shape for i in kept}
    if len(shapes) > 1:
      raise ValueError(f'images of several sizes ({", ".join(str(s[:2]) for s in sorted(shapes)[:3])}, '
                       '...): set --config.image_size to resize them on load')
    images = np.stack([results[i][0] for i in kept])
  else:
    images = np.zeros((0, size, size, 3), np.uint8)
  return Decoded(images, np.asarray(kept, np.int64), bad, sum(results[i][1] for i in kept))
