"""Independent float64 NumPy oracle of the MAE training loss.

Source: He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022 (arXiv:2111.06377), Sec. 3, and the
authors' official code, github.com/facebookresearch/mae, file models_mae.py
(methods patchify, random_masking and forward_loss; read at commit efb2a80).
Written from those, not from the code under test. Inputs are cast to float64;
losses return Python floats. mae_loss has a naive loop twin, mae_loss_loops
(pure Python floats, explicit loops), that _self_check() compares it against.

Conventions (all taken from the official code):
  * patchify: patches in row-major order over the (H/p, W/p) grid; inside a
    patch the p*p*C values run (row in patch, column in patch, channel), i.e.
    torch.einsum('nchpwq->nhwpqc') of the channels-first image. Our images
    are channels LAST, [B, H, W, C], so this is a reshape/transpose of
    [B, h, p, w, p, C] -> [B, h, w, p, p, C].
  * random_masking: len_keep = int(L * (1 - mask_ratio)) (truncation); the
    patches KEPT are the len_keep with the SMALLEST noise (ascending argsort,
    "small is keep, large is remove"); mask is 1.0 for removed patches and
    0.0 for kept ones, in the original patch order.
  * forward_loss: see mae_loss (norm_pix_loss uses the UNBIASED variance).

Usage:
  from oracles_mae import mae_loss
  loss = mae_loss(images_bhwc, reconstruction_blk, noise_bl, 0.75, p=4)
"""
import numpy as np


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def patchify(images, p):
  """images [B, H, W, C] -> [B, L, p*p*C], L = (H/p)*(W/p).

  Patch l = i * (W/p) + j covers rows i*p..i*p+p-1 and columns j*p..j*p+p-1;
  its element k = (r * p + c) * C + ch is images[b, i*p + r, j*p + c, ch].
  This is the same element order as MAE's patchify, which reshapes the
  channels-first image to (N, C, h, p, w, p) and applies
  einsum('nchpwq->nhwpqc') before flattening.
  """
  x = _f64(images)
  b, hh, ww, c = x.shape
  assert hh % p == 0 and ww % p == 0, (x.shape, p)
  h, w = hh // p, ww // p
  x = x.reshape(b, h, p, w, p, c)          # b, i, r, j, c_in_patch, ch
  x = x.transpose(0, 1, 3, 2, 4, 5)         # b, i, j, r, c_in_patch, ch
  return x.reshape(b, h * w, p * p * c)


def random_masking(noise, mask_ratio, len_keep=None):
  """MAE's per-sample random masking, driven by given noise [B, L].

  Returns (ids_keep [B, len_keep] int, mask [B, L] float64), mask being 1.0
  for REMOVED patches and 0.0 for kept ones, in the original patch order.
  ids_keep lists the kept patches in ascending-noise order (the order in
  which the official code feeds them to the encoder).

  len_keep defaults to the official int(L * (1 - mask_ratio)) (truncation
  toward zero). The code under test uses max(1, round(L * (1 - mask_ratio)))
  instead; the two agree whenever L * (1 - mask_ratio) is an integer >= 1
  (e.g. L=4 or 16 with ratio 0.75 or 0.5, the ratios tested) -- but beware
  that in floating point L * (1 - ratio) may land just below an integer, in
  which case int() truncates one lower; pass len_keep explicitly to override.

  Ties in the noise have probability 0 for continuous noise; a stable sort is
  used so that ties (if any) go to the lower patch index.
  """
  noise = _f64(noise)
  n, l = noise.shape
  if len_keep is None:
    len_keep = int(l * (1 - mask_ratio))
  ids_shuffle = np.argsort(noise, axis=1, kind="stable")  # ascending
  ids_keep = ids_shuffle[:, :len_keep]
  mask = np.ones((n, l), dtype=np.float64)
  np.put_along_axis(mask, ids_keep, 0.0, axis=1)
  return ids_keep, mask


def mae_loss(images, reconstruction, noise, mask_ratio, p,
             norm_pix_loss=True, len_keep=None):
  """The loss of MAE's official forward_loss, in float64.

  images [B, H, W, C] (channels last); reconstruction [B, L, p*p*C] (the
  decoder's per-patch pixel predictions, in patchify's element order); noise
  [B, L] (the uniform numbers that drive random_masking); returns a float.

    target = patchify(images)
    if norm_pix_loss:
      target = (target - mean) / (var + 1e-6) ** 0.5   per patch, over its
                                                        p*p*C values
    loss_l = mean over the p*p*C values of (reconstruction - target) ** 2
    loss   = sum_l(loss_l * mask_l) / sum_l(mask_l)     (removed patches only)

  The variance is the UNBIASED one (ddof=1, divide by p*p*C - 1). Evidence:
  the official forward_loss computes `var = target.var(dim=-1, keepdim=True)`
  with no unbiased/correction argument, and torch's documented default is
  Bessel's correction (torch.var: "correction=1 ... Defaults to Bessel's
  correction"; before torch 2.0 `unbiased=True` by default). Checked here
  too: torch 2.13 gives tensor([1.,2.,3.,4.]).var(dim=-1) = 1.6667 (ddof=1)
  versus 1.25 with unbiased=False. The paper itself only says "the
  normalized pixel values ... using the mean and standard deviation of all
  pixels in a patch" and does not fix the estimator. The mean is the plain
  mean; the 1e-6 is added to the variance before the square root.
  """
  target = patchify(images, p)
  pred = _f64(reconstruction)
  assert pred.shape == target.shape, (pred.shape, target.shape)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, ddof=1, keepdims=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
  per_patch = ((pred - target) ** 2).mean(axis=-1)        # [B, L]
  _, mask = random_masking(noise, mask_ratio, len_keep)
  return float((per_patch * mask).sum() / mask.sum())


def mae_loss_loops(images, reconstruction, noise, mask_ratio, p,
                   norm_pix_loss=True, len_keep=None):
  """Term-by-term twin of mae_loss: explicit Python loops over images,
  patches and pixels, Python floats, no vectorised NumPy operations. The
  mask is found by ranking each patch's noise (count of patches with
  smaller noise, ties to the lower index) and keeping ranks < len_keep."""
  images = _f64(images).tolist()
  pred = _f64(reconstruction).tolist()
  noise = _f64(noise).tolist()
  b = len(images)
  hh, ww, c = len(images[0]), len(images[0][0]), len(images[0][0][0])
  h, w = hh // p, ww // p
  n_patches = h * w
  d = p * p * c
  if len_keep is None:
    len_keep = int(n_patches * (1 - mask_ratio))

  num = 0.0
  den = 0.0
  for bi in range(b):
    for i in range(h):
      for j in range(w):
        l = i * w + j
        # the target patch, element k = (r * p + cc) * c + ch
        t = [0.0] * d
        for r in range(p):
          for cc in range(p):
            for ch in range(c):
              t[(r * p + cc) * c + ch] = images[bi][i * p + r][j * p + cc][ch]
        if norm_pix_loss:
          s = 0.0
          for k in range(d):
            s += t[k]
          mean = s / d
          ss = 0.0
          for k in range(d):
            ss += (t[k] - mean) ** 2
          var = ss / (d - 1)                      # unbiased, as torch's .var
          std = (var + 1e-6) ** 0.5
          for k in range(d):
            t[k] = (t[k] - mean) / std
        se = 0.0
        for k in range(d):
          se += (pred[bi][l][k] - t[k]) ** 2
        patch_loss = se / d
        # rank of this patch's noise among the image's patches
        rank = 0
        for m in range(n_patches):
          if noise[bi][m] < noise[bi][l] or (
              noise[bi][m] == noise[bi][l] and m < l):
            rank += 1
        removed = 0.0 if rank < len_keep else 1.0
        num += patch_loss * removed
        den += removed
  return num / den


def _self_check(verbose=True):
  rng = np.random.default_rng(0)
  out = []
  for p in (4, 2):
    for ratio in (0.75, 0.5):
      for npl in (True, False):
        b, hh, ww, c = 2, 8, 8, 3
        l = (hh // p) * (ww // p)
        images = rng.normal(size=(b, hh, ww, c))
        recon = rng.normal(size=(b, l, p * p * c))
        noise = rng.uniform(size=(b, l))
        v = mae_loss(images, recon, noise, ratio, p, npl)
        lo = mae_loss_loops(images, recon, noise, ratio, p, npl)
        _, mask = random_masking(noise, ratio)
        assert mask.sum() == b * (l - int(l * (1 - ratio)))
        assert abs(v - lo) <= 1e-12 * max(1.0, abs(v)), (p, ratio, npl, v, lo)
        out.append((p, ratio, npl, v, lo))
        if verbose:
          print(f"p={p} ratio={ratio} norm_pix_loss={npl}: "
                f"vectorised={v!r} loops={lo!r} diff={abs(v - lo):.3e}")
  return out


if __name__ == "__main__":
  _self_check()
