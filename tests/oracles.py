"""Independent float64 NumPy oracles of SSL losses, written from the papers
(and the authors' official code where a paper is ambiguous), not from the code
under test. Inputs are cast to float64; losses return Python floats.
"""
import math

import numpy as np


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def _l2n(x):
  x = _f64(x)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(a):  # over the last axis
  m = a.max(axis=-1, keepdims=True)
  return (m + np.log(np.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


def _log_softmax(a):
  return a - _logsumexp(a)[..., None]


def nt_xent(z, temperature):
  """SimCLR NT-Xent loss (Chen et al. 2020, "A Simple Framework...", eq. 1).

  z: [2N, D]; rows 2k and 2k+1 are the two views of image k, so the positive of
  row i is row i ^ 1. sim = cosine similarity / temperature; the denominator
  runs over all k != i (self-similarity excluded). Returns the mean of the 2N
  per-row losses (the paper's sum over both orders of each pair, / 2N).
  """
  z = _l2n(z)
  logits = z @ z.T / temperature
  np.fill_diagonal(logits, -np.inf)
  idx = np.arange(z.shape[0])
  return float(np.mean(_logsumexp(logits) - logits[idx, idx ^ 1]))


def _ctr(q, k, temperature):
  ce = -np.diag(_log_softmax(_l2n(q) @ _l2n(k).T / temperature))
  return ce.mean() * 2.0 * temperature


def infonce_mocov3(q1, q2, k1, k2, temperature):
  """MoCo v3 symmetrised InfoNCE (Chen, Xie, He 2021, Algorithm 1; official
  facebookresearch/moco-v3 moco/builder.py, MoCo.ctr_loss / forward).

  q1, q2: [N, D] predictor outputs of the online branch for views 1, 2.
  k1, k2: [N, D] momentum-branch projections for views 1, 2 (constants).
  ctr(q, k) = CE(l2n(q) @ l2n(k).T / T, arange(N)).mean() * 2T (the 2T factor as
  in the official ctr_loss). Returns ctr(q1, k2) + ctr(q2, k1).
  """
  return float(_ctr(q1, k2, temperature) + _ctr(q2, k1, temperature))


def moco_queue(q1, q2, k1, k2, queue1, queue2, temperature):
  """MoCo's InfoNCE with a queue (He et al. 2020, eq. 1; v2's settings, Chen et al. 2020), made
  symmetric as solo-learn's MoCo v2+: L_q = -log exp(q.k+/T) / (exp(q.k+/T) + sum_{i=1..K}
  exp(q.k_i/T)), q, k+ and the K queued keys L2-normalised. The queries of view 1 take view 2's
  keys and view 2's queue, and the reverse; the mean over the batch of each, then of the two.

  q1, q2: [N, D] queries; k1, k2: [N, D] keys; queue1, queue2: [K, D] past keys of each view.
  """
  def one(q, k, queue):
    q, k, queue = _l2n(q), _l2n(k), _l2n(queue)
    total = 0.0
    for i in range(len(q)):
      pos = math.exp(float(q[i] @ k[i]) / temperature)
      neg = sum(math.exp(float(q[i] @ key) / temperature) for key in queue)
      total += -math.log(pos / (pos + neg))
    return total / len(q)
  return 0.5 * (one(q1, k2, queue2) + one(q2, k1, queue1))


def byol(p1, p2, t1, t2):
  """BYOL loss (Grill et al. 2020, eq. 2 and the symmetrised L + L~).

  p1, p2: [N, D] online predictions for views 1, 2; t1, t2: [N, D] target
  projections for views 1, 2. Per pair ||l2n(p) - l2n(t)||^2 = 2 - 2 cos(p, t).
  Returns mean_N[2 - 2cos(p1, t2)] + mean_N[2 - 2cos(p2, t1)].
  """
  d = lambda p, t: np.mean(2.0 - 2.0 * np.sum(_l2n(p) * _l2n(t), axis=-1))
  return float(d(p1, t2) + d(p2, t1))


def byol_tau(step, total_steps, base_tau=0.99, final_tau=1.0):
  """BYOL target decay (Grill et al. 2020, Sec. 3.3): tau = 1 - (1 - tau_base)
  (cos(pi k / K) + 1) / 2, with 1 generalised to final_tau (k=0: base_tau)."""
  c = (math.cos(math.pi * step / total_steps) + 1.0) / 2.0
  return float(final_tau - (final_tau - base_tau) * c)


def ema(target, online, tau):
  """EMA of parameters (BYOL Sec. 3.1: xi <- tau xi + (1 - tau) theta), leafwise
  over nested dicts of arrays; returns the same nesting of float64 arrays."""
  if isinstance(target, dict):
    return {k: ema(target[k], online[k], tau) for k in target}
  return tau * _f64(target) + (1.0 - tau) * _f64(online)


def simsiam(p1, p2, z1, z2):
  """SimSiam loss (Chen & He 2021, eq. 1-2 and Algorithm 1).

  p1, p2: [N, D] predictor outputs; z1, z2: [N, D] projector outputs (stop-grad;
  only values matter here). D(p, z) = -mean_N cos(p, z).
  Returns 0.5 D(p1, z2) + 0.5 D(p2, z1) (minimum -1).
  """
  d = lambda p, z: -np.mean(np.sum(_l2n(p) * _l2n(z), axis=-1))
  return float(0.5 * d(p1, z2) + 0.5 * d(p2, z1))


def fastsiam(p, z):
  """FastSiam loss (Pototzky et al. 2022, section 3: the target of a view is the average of the
  other views' projections, stop-gradient; the loss SimSiam's negative cosine).

  p, z: lists of N arrays [B, D], prediction and projection of each of N views.
  Returns (1/N) sum_i D(p_i, (1/(N-1)) sum_{j != i} z_j), D as in simsiam above.
  """
  n = len(p)
  total = 0.0
  for i in range(n):
    target = np.zeros_like(z[0], dtype=np.float64)
    for j in range(n):
      if j != i:
        target = target + np.asarray(z[j], np.float64)
    target = target / (n - 1)
    total += -np.mean(np.sum(_l2n(np.asarray(p[i], np.float64)) * _l2n(target), axis=-1))
  return float(total / n)


def dcl(z1, z2, temperature, sigma=None):
  """Decoupled contrastive loss (Yeh et al. 2022, "Decoupled Contrastive Learning", Eq. 6), and
  with sigma its negative von Mises-Fisher weighting (DCLW). Written for this project by a helper
  that saw only the paper's equations (as transcribed by a documentation page citing it), not the
  code under test.

  z1, z2: [N, D], row i of each the two views of image i. Per image i and view k:
    -w_i <z_i^(1), z_i^(2)>/tau + log sum_{l in {1,2}, j != i} exp(<z_i^(k), z_j^(l)>/tau)
  (one log over the union of the 2N - 2 negatives; the anchor and its positive left out), with
  cosine similarities, w_i = 1 (DCL) or 2 - exp(s_i/sigma) / mean_j exp(s_j/sigma) (DCLW, s_i the
  positive pair's similarity); the mean over the 2N terms.
  """
  z1, z2 = _l2n(z1), _l2n(z2)
  n = z1.shape[0]
  z = np.concatenate([z1, z2], axis=0)  # row r < N: z_r^(1); row r >= N: z_{r-N}^(2)
  logits = z @ z.T / temperature
  image = np.arange(2 * n) % n
  negatives = _logsumexp(np.where(image[:, None] != image[None, :], logits, -np.inf))  # [2N]
  pos = np.einsum('nd,nd->n', z1, z2)
  if sigma is None:
    w = np.ones(n)
  else:
    e = np.exp(pos / sigma - (pos / sigma).max())
    w = 2.0 - e / e.mean()
  return float(np.mean(np.concatenate([-w * pos / temperature] * 2) + negatives))


def _dcl_by_loops(z1, z2, temperature, sigma=None):
  """dcl() term by term with Python floats (the helper's second, naive version)."""
  z1, z2 = _l2n(z1).tolist(), _l2n(z2).tolist()
  dot = lambda u, v: sum(a * b for a, b in zip(u, v))
  views, n = {1: z1, 2: z2}, len(z1)
  if sigma is None:
    w = [1.0] * n
  else:
    ex = [math.exp(dot(z1[i], z2[i]) / sigma) for i in range(n)]
    w = [2.0 - e / (sum(ex) / n) for e in ex]
  total = 0.0
  for i in range(n):
    for k in (1, 2):
      denominator = sum(math.exp(dot(views[k][i], views[l][j]) / temperature)
                        for j in range(n) if j != i for l in (1, 2))
      total += -w[i] * dot(z1[i], z2[i]) / temperature + math.log(denominator)
  return total / (2 * n)


def barlow_twins(z1, z2, lambd=0.0051, scale=1.0, eps=1e-5):
  """Barlow Twins (Zbontar et al. 2021, eq. 1-2 and Algorithm 1; official
  facebookresearch/barlowtwins main.py, BarlowTwins.forward).

  z1, z2: [N, D]. Each column standardised over the batch as BatchNorm1d
  (affine=False, training mode) does: (z - mean) / sqrt(var + eps), var 1/N
  (official code; Algorithm 1's pseudocode divides by torch's unbiased std).
  C = z1n.T @ z2n / N; loss = sum_i (1 - C_ii)^2 + lambd sum_{i!=j} C_ij^2.
  Returns scale * loss.
  """
  def bn(z):
    z = _f64(z)
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)
  n = _f64(z1).shape[0]
  c = bn(z1).T @ bn(z2) / n
  on = np.sum((1.0 - np.diag(c)) ** 2)
  off = np.sum(c ** 2) - np.sum(np.diag(c) ** 2)
  return float(scale * (on + lambd * off))


def vicreg(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0, eps=1e-4):
  """VICReg (Bardes, Ponce, LeCun 2022, eqs. 1-6; official
  facebookresearch/vicreg main_vicreg.py, VICReg.forward).

  z1, z2: [N, D]. Invariance s = mean over N and D of (z1 - z2)^2 (F.mse_loss).
  v(z) = mean_D relu(1 - sqrt(var(z, ddof=1) + eps)).
  c(z) = sum_{i!=j} Cov(z)_ij^2 / D, Cov = zc.T @ zc / (N - 1), zc centred.
  This oracle follows the paper's eq. 6, which SUMS both branches:
    loss = sim_weight s + var_weight (v(z1) + v(z2)) + cov_weight (c(z1) + c(z2))
  (as solo-learn's vicreg_loss_func does too). The official code averages the
  variance term instead (std_loss = v(z1)/2 + v(z2)/2): the same with var_weight
  halved.
  """
  z1, z2 = _f64(z1), _f64(z2)
  inv = np.mean((z1 - z2) ** 2)
  v = lambda z: np.mean(np.maximum(0.0, 1.0 - np.sqrt(z.var(0, ddof=1) + eps)))

  def c(z):
    n, d = z.shape
    zc = z - z.mean(0)
    cov = zc.T @ zc / (n - 1)
    return (np.sum(cov ** 2) - np.sum(np.diag(cov) ** 2)) / d
  return float(sim_weight * inv + var_weight * (v(z1) + v(z2))
               + cov_weight * (c(z1) + c(z2)))


def distillation(student_logits, teacher_logits, temperature, labels=None,
                 label_weight=0.0):
  """SimCLR v2 distillation (Chen et al. 2020b, "Big Self-Supervised Models are
  Strong Semi-Supervised Learners", eq. 2 and 3).

  student_logits, teacher_logits: [B, C]. distill = mean_B of
  -sum_y softmax(t / tau)_y log softmax(s / tau)_y (same tau both sides, no
  tau^2 factor). labels: optional int [B], -1 = unlabelled.
  If labels is given and label_weight > 0, returns
    (1 - label_weight) * distill + label_weight * label_ce,
  label_ce = mean over labelled rows of CE(softmax(student_logits), label) at
  temperature 1 (0 if no row is labelled). This is the mixing of eq. 3, where
  the paper weights the label term by (1 - alpha) and the distillation term by
  alpha, i.e. label_weight = 1 - alpha. The paper sums over examples; here each
  term is a batch mean.
  """
  s, t = _f64(student_logits), _f64(teacher_logits)
  p_t = np.exp(_log_softmax(t / temperature))
  distill = np.mean(-np.sum(p_t * _log_softmax(s / temperature), axis=-1))
  if labels is None or label_weight <= 0:
    return float(distill)
  labels = np.asarray(labels).astype(np.int64)
  mask = labels >= 0
  if mask.any():
    ls = _log_softmax(s[mask])
    label_ce = -np.mean(ls[np.arange(ls.shape[0]), labels[mask]])
  else:
    label_ce = 0.0
  return float((1.0 - label_weight) * distill + label_weight * label_ce)


def rankme(z, eps=1e-7):
  """RankMe (Garrido et al. 2023, ICML, Sec. 3, definition of RankMe).

  z: [N, D], not centred. s = singular values; p_k = s_k / ||s||_1 + eps;
  returns exp(-sum_k p_k log p_k) (between ~1 and min(N, D)).
  """
  s = np.linalg.svd(_f64(z), compute_uv=False)
  p = s / s.sum() + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def embedding_std(z):
  """Collapse monitor of SimSiam (Chen & He 2021, Sec. 4.1, Fig. 2 middle).

  z: [N, D]. Each row L2-normalised; then the per-dimension standard deviation
  over the batch (population std, ddof=0: the paper does not say which),
  averaged over D. ~1/sqrt(D) for isotropic Gaussian z, 0 when collapsed.
  """
  return float(np.mean(np.std(_l2n(z), axis=0)))


def _self_check():
  rng = np.random.default_rng(0)
  n, d = 64, 16
  a = rng.normal(size=(n, d))
  assert nt_xent(np.repeat(a, 2, 0), 0.1) < nt_xent(np.tile(a, (2, 1)), 0.1)
  zn = _l2n(rng.normal(size=(6, 3)))  # brute-force eq. 1 on a tiny batch
  e = lambda i, k: np.exp(zn[i] @ zn[k] / 0.5)
  tot = sum(-np.log(e(i, i ^ 1) / sum(e(i, k) for k in range(6) if k != i))
            for i in range(6))
  assert abs(nt_xent(zn, 0.5) - tot / 6) < 1e-12

  u, v = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))  # dcl against its term-by-term version
  for t, sigma in ((0.1, None), (0.1, 0.5), (0.5, 1.0)):
    assert abs(dcl(u, v, t, sigma) - _dcl_by_loops(u, v, t, sigma)) < 1e-10

  q = rng.normal(size=(n, d))
  assert infonce_mocov3(q, q, q, q, 0.2) < infonce_mocov3(q, q, a, a, 0.2)
  assert abs(byol(a, a, 3 * a, 2 * a)) < 1e-12
  assert abs(byol(a, a, -a, -a) - 8.0) < 1e-12
  assert abs(simsiam(a, a, a, a) + 1.0) < 1e-12
  assert byol_tau(0, 100) == 0.99 and byol_tau(100, 100) == 1.0
  assert abs(byol_tau(50, 100) - 0.995) < 1e-12

  out = ema({'w': np.ones(3), 'b': {'c': 0}}, {'w': 0, 'b': {'c': 1}}, 0.9)
  assert np.allclose(out['w'], 0.9) and np.allclose(out['b']['c'], 0.1)

  # Decorrelated standardised columns: centred orthonormal basis * sqrt(N).
  g = rng.normal(size=(n, d))
  h = np.linalg.qr(g - g.mean(0))[0] * np.sqrt(n)
  assert barlow_twins(h, h) < 1e-3
  assert barlow_twins(h, rng.normal(size=(n, d))) > 1.0

  b = rng.normal(size=(n, d))
  assert abs(vicreg(b, b, var_weight=0, cov_weight=0)) < 1e-15
  assert abs(vicreg(b, b + 1.0, var_weight=0, cov_weight=0) - 25.0) < 1e-12
  zero = np.zeros((n, d))  # collapsed: v = 1 - sqrt(eps) = 0.99 per branch
  assert abs(vicreg(zero, zero) - 25.0 * 2 * 0.99) < 1e-12

  logits = rng.normal(size=(8, 5))
  full = distillation(logits, logits, 2.0)  # = mean entropy of teacher
  assert distillation(rng.normal(size=(8, 5)), logits, 2.0) > full
  unl = distillation(logits, logits, 2.0, -np.ones(8), 0.5)
  assert abs(unl - full / 2) < 1e-12
  lab = np.array([0, -1, 3, -1, -1, -1, -1, -1])
  ce = -np.mean([_log_softmax(logits[0])[0], _log_softmax(logits[2])[3]])
  mix = distillation(logits, logits, 2.0, lab, 0.3) - (0.7 * full + 0.3 * ce)
  assert abs(mix) < 1e-12

  r1 = np.outer(rng.normal(size=n), rng.normal(size=d))
  assert abs(rankme(r1) - 1.0) < 1e-3
  assert rankme(rng.normal(size=(1000, d))) > 0.9 * d
  assert abs(embedding_std(rng.normal(size=(4000, d))) - d ** -0.5) < 0.02
  assert embedding_std(np.ones((n, d))) < 1e-12
  print('oracles self-check passed')


if __name__ == '__main__':
  _self_check()
