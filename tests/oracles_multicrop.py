"""Independent float64 NumPy oracles of NNCLR, DINO and SwAV, written from the
papers' equations and the authors' pseudo-code in the papers (with the
authors' official code consulted only to settle normalisation constants),
not from the code under test. Inputs are cast to float64; losses return
Python floats. Each vectorised oracle has a naive loop twin (pure Python
floats, explicit loops) that _self_check() compares it against.
"""
import math

import numpy as np

from oracles import _f64, _l2n, _logsumexp  # the shared helpers


def _log_softmax(a):
  return a - _logsumexp(a)[..., None]


def _softmax(a):
  return np.exp(_log_softmax(a))


# ----------------------------------------------------------------------------
# NNCLR
# ----------------------------------------------------------------------------

def nnclr_neighbours(z, queue):
  """Indices of the nearest neighbours of NNCLR (Dwibedi et al. 2021, "With a
  Little Help from My Friends", Eq. 2 and Algorithm 1's NN(z, Q)).

  z: [N, D]; queue: [K, D] the support set Q. Both are L2-normalised, and
  NN(z, Q) = argmax_{q in Q} z . q (cosine similarity). Returns int indices
  [N] into queue. Ties go to the lowest index (np.argmax); the paper does
  not say, and ties have probability 0 for continuous inputs.
  """
  return np.argmax(_l2n(z) @ _l2n(queue).T, axis=1)


def _nnclr_one(anchors, preds, temperature):
  logits = _l2n(anchors) @ _l2n(preds).T / temperature
  return float(-np.mean(np.diag(_log_softmax(logits))))


def nnclr(p1, p2, z1, z2, queue, temperature):
  """NNCLR loss (Dwibedi et al. 2021, Eq. 1-2 and Algorithm 1).

  p1, p2: [N, D] predictor outputs of views 1, 2; z1, z2: [N, D] projections
  of views 1, 2; queue: [K, D] support set Q; temperature: T.

  Eq. 1: L_i = -log( exp(NN(z_i, Q) . z_i^+ / T) / sum_{k=1..N} exp(NN(z_i, Q)
  . z_k^+ / T) ). Following Algorithm 1, z^+ is the *prediction* of the other
  view (p2 for anchors from z1) and both sides are L2-normalised, so
  L(nn, p) = CE(l2n(nn) @ l2n(p).T / T, arange(N)): each row's denominator
  runs over the N predictions of the other view only (no same-view
  negatives, no queue negatives). NN(z) is the L2-normalised support row
  of largest cosine similarity to z (nnclr_neighbours); it is a constant
  (no gradient path through the argmax).
  Returns 0.5 * (L(NN(z1), p2) + L(NN(z2), p1)) as in Algorithm 1
  (loss = L(NN1, p2)/2 + L(NN2, p1)/2), each L the mean over the batch.
  """
  q = _l2n(queue)
  nn1 = q[nnclr_neighbours(z1, queue)]
  nn2 = q[nnclr_neighbours(z2, queue)]
  return 0.5 * (_nnclr_one(nn1, p2, temperature) +
                _nnclr_one(nn2, p1, temperature))


def _unit_rows_by_loops(x):
  out = []
  for row in _f64(x).tolist():
    norm = math.sqrt(sum(v * v for v in row))
    out.append([v / norm for v in row])
  return out


def _dot(a, b):
  return sum(x * y for x, y in zip(a, b))


def _nnclr_by_loops(p1, p2, z1, z2, queue, temperature):
  q = _unit_rows_by_loops(queue)

  def neighbour(z_row):
    best, best_sim = None, -math.inf
    for row in q:
      s = _dot(z_row, row)
      if s > best_sim:
        best, best_sim = row, s
    return best

  def one(z, p):
    z, p = _unit_rows_by_loops(z), _unit_rows_by_loops(p)
    total = 0.0
    for i in range(len(z)):
      a = neighbour(z[i])
      num = math.exp(_dot(a, p[i]) / temperature)
      den = sum(math.exp(_dot(a, p[k]) / temperature) for k in range(len(p)))
      total += -math.log(num / den)
    return total / len(z)

  return 0.5 * (one(z1, p2) + one(z2, p1))


# ----------------------------------------------------------------------------
# DINO
# ----------------------------------------------------------------------------

def dino(student, teacher, center, student_temperature, teacher_temperature):
  """DINO loss (Caron et al. 2021, "Emerging Properties in Self-Supervised
  Vision Transformers", Eq. 2-3 and Algorithm 1's H).

  student: [V, N, K] student logits of V views, the first 2 the global views
  (same order as teacher); teacher: [2, N, K] teacher logits of the 2 global
  views; center: [K].
  P_t = softmax((teacher - center) / teacher_temperature) (centering and
  sharpening, Alg. 1), P_s = softmax(student / student_temperature), over K.
  H(P_t, P_s) = -sum_k P_t log P_s, averaged over the batch (Alg. 1's
  .sum(dim=1).mean()).
  Eq. 3 sums H over x in {x1g, x2g}, x' in V, x' != x; the scale is not fixed
  by Eq. 3, so we take Algorithm 1's (V=2: H(t1,s2)/2 + H(t2,s1)/2) and the
  official DINOLoss's (total / n_loss_terms): the mean over the 2 * (V - 1)
  pairs (t, v) with v != t. The teacher is a constant (stop-gradient).
  """
  s = _f64(student)
  t = _f64(teacher)
  log_ps = _log_softmax(s / student_temperature)              # [V, N, K]
  pt = _softmax((t - _f64(center)) / teacher_temperature)     # [2, N, K]
  total, terms = 0.0, 0
  for ti in range(t.shape[0]):
    for v in range(s.shape[0]):
      if v == ti:
        continue
      total += float(np.mean(-np.sum(pt[ti] * log_ps[v], axis=-1)))
      terms += 1
  return total / terms


def dino_center(center, teacher, momentum):
  """DINO centre update (Caron et al. 2021, Eq. 4 and Algorithm 1:
  C = m*C + (1-m)*cat([t1, t2]).mean(dim=0)).

  center: [K]; teacher: [2, N, K] raw teacher logits (before centering and
  temperature) of the two global views; the batch mean is over both views
  and the batch (2N rows). Returns the new [K] centre (float64 array).
  """
  t = _f64(teacher)
  batch_center = t.reshape(-1, t.shape[-1]).mean(axis=0)
  return momentum * _f64(center) + (1.0 - momentum) * batch_center


def _softmax_row_by_loops(row, temperature):
  xs = [x / temperature for x in row]
  m = max(xs)
  es = [math.exp(x - m) for x in xs]
  tot = sum(es)
  return [e / tot for e in es]


def _dino_by_loops(student, teacher, center, student_temperature,
                   teacher_temperature):
  s, t, c = _f64(student).tolist(), _f64(teacher).tolist(), _f64(center).tolist()
  total, terms = 0.0, 0
  for ti in range(len(t)):
    for v in range(len(s)):
      if v == ti:
        continue
      batch = 0.0
      for n in range(len(t[ti])):
        pt = _softmax_row_by_loops([a - b for a, b in zip(t[ti][n], c)],
                                   teacher_temperature)
        ps = _softmax_row_by_loops(s[v][n], student_temperature)
        batch += -sum(pt[k] * math.log(ps[k]) for k in range(len(pt)))
      total += batch / len(t[ti])
      terms += 1
  return total / terms


def _dino_center_by_loops(center, teacher, momentum):
  t = _f64(teacher).tolist()
  rows = [r for view in t for r in view]
  return [momentum * c + (1.0 - momentum) * sum(r[k] for r in rows) / len(rows)
          for k, c in enumerate(_f64(center).tolist())]


# ----------------------------------------------------------------------------
# SwAV
# ----------------------------------------------------------------------------

def sinkhorn(scores, epsilon, iterations):
  """SwAV's Sinkhorn-Knopp codes (Caron et al. 2020, "Unsupervised Learning
  of Visual Features by Contrasting Cluster Assignments", Sec. 3.1 Eq. 3-5,
  Algorithm 1 and Appendix A.1).

  scores: [N, K] prototype scores z . c. Q = exp(scores / epsilon).T [K, N]
  divided by its total sum; then `iterations` times: each of the K rows
  divided by its sum and by K (each prototype gets mass 1/K), then each of
  the N columns divided by its sum and by N (each sample mass 1/N). Returns
  (Q * N).T [N, K]: each row a distribution summing to 1 (after >= 1
  iteration). Computed in the log domain (each "divide by the sum" is a
  subtraction of a logsumexp), which is the same arithmetic as the paper's
  but cannot overflow or underflow a whole prototype row to 0/0 for large
  scores / small epsilon (_sinkhorn_by_loops is the direct exp version).
  """
  s = _f64(scores)
  n, k = s.shape
  log_q = s.T / epsilon                                       # [K, N]
  log_q = log_q - _logsumexp(log_q.reshape(-1))
  for _ in range(iterations):
    log_q = log_q - _logsumexp(log_q)[:, None] - math.log(k)      # rows
    log_q = log_q - _logsumexp(log_q.T)[None, :] - math.log(n)    # columns
  return np.exp(log_q + math.log(n)).T


def swav(scores, epsilon, iterations, temperature, global_views=2):
  """SwAV swapped-prediction loss with multi-crop (Caron et al. 2020, Eq. 1-2
  and Sec. 3.2 multi-crop; official main_swav.py for the averaging).

  scores: [V, N, K] prototype scores of V views; the first `global_views`
  views get codes. For each code view i: q_i = sinkhorn(scores[i], epsilon,
  iterations), a constant (no gradient). Eq. 2's l(z_t, q_s) = -sum_k
  q_s^(k) log p_t^(k), p_t = softmax(z_t . c / temperature). Each code q_i
  is predicted by *every* other view v != i, including the other global
  view(s) and all small crops (Sec. 3.2: codes from the full-resolution
  crops only, used to predict all other crops; official code iterates
  v over np.delete(arange(V), i)). Per (i, v): mean over the batch; then
  mean over the V - 1 views v, then over the global views i.
  """
  s = _f64(scores)
  v_count = s.shape[0]
  log_p = _log_softmax(s / temperature)                       # [V, N, K]
  total = 0.0
  for i in range(global_views):
    q = sinkhorn(s[i], epsilon, iterations)
    sub = 0.0
    for v in range(v_count):
      if v == i:
        continue
      sub += float(-np.mean(np.sum(q * log_p[v], axis=-1)))
    total += sub / (v_count - 1)
  return total / global_views


def _sinkhorn_by_loops(scores, epsilon, iterations):
  s = _f64(scores).tolist()
  n, k = len(s), len(s[0])
  q = [[math.exp(s[j][c] / epsilon) for j in range(n)] for c in range(k)]
  tot = sum(sum(row) for row in q)
  q = [[x / tot for x in row] for row in q]
  for _ in range(iterations):
    for c in range(k):
      r = sum(q[c])
      for j in range(n):
        q[c][j] = q[c][j] / r / k
    for j in range(n):
      col = sum(q[c][j] for c in range(k))
      for c in range(k):
        q[c][j] = q[c][j] / col / n
  return [[q[c][j] * n for c in range(k)] for j in range(n)]


def _swav_by_loops(scores, epsilon, iterations, temperature, global_views=2):
  s = _f64(scores).tolist()
  total = 0.0
  for i in range(global_views):
    q = _sinkhorn_by_loops(s[i], epsilon, iterations)
    sub = 0.0
    for v in range(len(s)):
      if v == i:
        continue
      batch = 0.0
      for n in range(len(s[v])):
        p = _softmax_row_by_loops(s[v][n], temperature)
        batch += -sum(q[n][c] * math.log(p[c]) for c in range(len(p)))
      sub += batch / len(s[v])
    total += sub / (len(s) - 1)
  return total / global_views


# ----------------------------------------------------------------------------
# Self-check
# ----------------------------------------------------------------------------

def _self_check():
  rng = np.random.default_rng(0)
  tol = 1e-10

  # --- NNCLR: against loops, several sizes and temperatures.
  for n, d, k, t in ((5, 7, 11, 0.1), (3, 4, 2, 0.5), (8, 16, 32, 1.0)):
    p1, p2, z1, z2 = (rng.normal(size=(n, d)) for _ in range(4))
    queue = rng.normal(size=(k, d))
    assert abs(nnclr(p1, p2, z1, z2, queue, t) -
               _nnclr_by_loops(p1, p2, z1, z2, queue, t)) < tol
  n, d, k = 6, 5, 9
  p1, p2, z1, z2 = (rng.normal(size=(n, d)) for _ in range(4))
  queue = rng.normal(size=(k, d))
  base = nnclr(p1, p2, z1, z2, queue, 0.2)
  # Positive rescaling of any input (rows or whole) changes nothing.
  sc = rng.uniform(0.5, 3.0, size=(n, 1))
  assert abs(nnclr(3 * p1, sc * p2, 2 * z1, sc * z2, 5 * queue, 0.2) - base) < tol
  # Permuting the support set changes nothing; neighbours follow the permutation.
  perm = rng.permutation(k)
  assert abs(nnclr(p1, p2, z1, z2, queue[perm], 0.2) - base) < tol
  assert np.array_equal(perm[nnclr_neighbours(z1, queue[perm])],
                        nnclr_neighbours(z1, queue))
  # Permuting the batch jointly changes nothing.
  bp = rng.permutation(n)
  assert abs(nnclr(p1[bp], p2[bp], z1[bp], z2[bp], queue, 0.2) - base) < tol
  # If the support set holds z itself, NN(z) = l2n(z): loss reduces to the
  # plain cross-view CE of l2n(z) against the other view's predictions.
  queue_z = np.concatenate([z1, z2, 0.01 * rng.normal(size=(3, d))])
  assert np.array_equal(nnclr_neighbours(z1, queue_z), np.arange(n))
  direct = 0.5 * (_nnclr_one(z1, p2, 0.2) + _nnclr_one(z2, p1, 0.2))
  assert abs(nnclr(p1, p2, z1, z2, queue_z, 0.2) - direct) < tol
  # Perfect alignment with the neighbour beats misalignment; bounds.
  q1 = _l2n(queue)[nnclr_neighbours(z1, queue)]
  q2 = _l2n(queue)[nnclr_neighbours(z2, queue)]
  assert nnclr(q2, q1, z1, z2, queue, 0.2) < nnclr(-q2, -q1, z1, z2, queue, 0.2)
  assert 0.0 < base < math.log(n) + 2.0 / 0.2  # CE <= log N + 2/T for unit rows

  # --- DINO: against loops, several sizes and temperatures.
  for v, n, k, ts, tt in ((4, 5, 7, 0.1, 0.04), (2, 3, 4, 0.5, 0.2),
                          (6, 8, 16, 1.0, 1.0), (3, 1, 2, 0.1, 0.07)):
    s = rng.normal(size=(v, n, k)) * 2
    te = rng.normal(size=(2, n, k)) * 2
    c = rng.normal(size=k)
    assert abs(dino(s, te, c, ts, tt) - _dino_by_loops(s, te, c, ts, tt)) < tol
    m = 0.9
    assert np.allclose(dino_center(c, te, m), _dino_center_by_loops(c, te, m),
                       rtol=0, atol=tol)
  # V = 2, teacher == student on the global views: only the swapped pairs
  # count, 0.5 * (H(t0, s1) + H(t1, s0)); same-view pairs never enter.
  n, k = 5, 7
  g = rng.normal(size=(2, n, k))
  c = rng.normal(size=k)
  h = lambda a, b: float(np.mean(-np.sum(
      _softmax((a - c) / 0.04) * _log_softmax(b / 0.1), axis=-1)))
  assert abs(dino(g, g, c, 0.1, 0.04) - 0.5 * (h(g[0], g[1]) + h(g[1], g[0]))) < tol
  # Changing what the student says about view t must not move the (t, t) term:
  # with V=2, replacing student view 0 only changes H(t1, s0).
  g2 = g.copy()
  g2[0] = rng.normal(size=(n, k))
  assert abs(dino(g2, g, c, 0.1, 0.04) - 0.5 * (h(g[0], g[1]) + h(g[1], g2[0]))) < tol
  # All views identical, equal temperatures, zero centre: loss = mean entropy.
  x = rng.normal(size=(n, k))
  ent = float(np.mean(-np.sum(_softmax(x / 0.3) * _log_softmax(x / 0.3), -1)))
  same = np.stack([x] * 4)
  assert abs(dino(same, same[:2], np.zeros(k), 0.3, 0.3) - ent) < tol
  # Gibbs: the loss is >= the teacher's mean entropy, with equality above.
  s = rng.normal(size=(4, n, k))
  assert dino(s, same[:2], np.zeros(k), 0.3, 0.3) > ent
  # Adding a constant to the centre, the teacher or the student logits of a
  # row (softmax shift-invariance) changes nothing.
  s = rng.normal(size=(4, n, k))
  te = rng.normal(size=(2, n, k))
  base = dino(s, te, c, 0.1, 0.04)
  assert abs(dino(s + rng.normal(size=(4, n, 1)), te + rng.normal(size=(2, n, 1)),
                  c + 3.0, 0.1, 0.04) - base) < tol
  # Swapping the two global views (in both student and teacher) changes nothing.
  sw = s[[1, 0, 2, 3]]
  assert abs(dino(sw, te[::-1], c, 0.1, 0.04) - base) < tol
  # Pair count: V=4 gives 6 pairs.
  manual = sum(h2 for h2 in (
      float(np.mean(-np.sum(_softmax((te[ti] - c) / 0.04) *
                            _log_softmax(s[vv] / 0.1), -1)))
      for ti in range(2) for vv in range(4) if vv != ti)) / 6
  assert abs(base - manual) < tol
  # Centre: momentum 1 keeps it; momentum 0 is the batch mean over 2N rows.
  assert np.allclose(dino_center(c, te, 1.0), c, rtol=0, atol=0)
  assert np.allclose(dino_center(c, te, 0.0),
                     np.concatenate([te[0], te[1]]).mean(0), rtol=0, atol=1e-15)

  # --- Sinkhorn: against loops; marginals.
  for n, k, eps, it in ((5, 7, 0.05, 3), (7, 5, 0.1, 3), (4, 4, 0.5, 1),
                        (8, 3, 0.05, 10), (6, 9, 1.0, 0)):
    sc = np.tanh(rng.normal(size=(n, k)))  # scores of unit vectors: |s| <= 1
    a, b = sinkhorn(sc, eps, it), np.array(_sinkhorn_by_loops(sc, eps, it))
    assert a.shape == (n, k) and np.max(np.abs(a - b)) < tol
  for n, k in ((5, 7), (12, 4), (6, 6)):
    sc = np.tanh(rng.normal(size=(n, k)))
    # (Convergence speed depends on epsilon: at 0.5, 50 iterations reach
    # ~1e-15; at SwAV's 0.05 it is slower, but the error still shrinks.)
    qq = sinkhorn(sc, 0.5, 50)
    assert np.all(qq > 0)
    assert np.allclose(qq.sum(1), 1.0, rtol=0, atol=1e-12)      # exact after the column step
    assert np.allclose(qq.sum(0), n / k, rtol=0, atol=1e-10)    # converged prototype marginals
    gap = lambda it: np.max(np.abs(sinkhorn(sc, 0.05, it).sum(0) - n / k))
    assert gap(50) < 0.1 * gap(3) and gap(500) < gap(50)
    # After any number >= 1 of iterations the rows sum to 1.
    assert np.allclose(sinkhorn(sc, 0.05, 1).sum(1), 1.0, rtol=0, atol=1e-12)
    # A per-prototype additive shift of the scores scales the rows of Q,
    # which the first row step removes exactly (any iterations >= 1); a
    # per-sample shift scales columns, which only the converged fixed point
    # (the unique doubly-stochastic scaling) forgets.
    proto = sc + rng.normal(size=(1, k))
    assert np.allclose(sinkhorn(proto, 0.05, 3), sinkhorn(sc, 0.05, 3),
                       rtol=0, atol=1e-10)
    samp = sc + 0.05 * rng.normal(size=(n, 1))
    assert np.allclose(sinkhorn(samp, 0.5, 200), sinkhorn(sc, 0.5, 200),
                       rtol=0, atol=1e-8)
    # Large scores / tiny epsilon neither overflow nor underflow (log domain).
    big = sinkhorn(50.0 * sc, 0.01, 3)
    assert np.all(np.isfinite(big)) and np.allclose(big.sum(1), 1.0)
  # Uniform scores give uniform codes.
  assert np.allclose(sinkhorn(np.zeros((5, 7)), 0.05, 3), 1.0 / 7, rtol=0, atol=1e-15)
  # Sinkhorn's fixed point: equal to the row-softmax of scores / epsilon when
  # that already has equal prototype marginals (here a circulant matrix).
  circ = np.array([[np.cos(2 * np.pi * ((j - c) % 6) / 6) for c in range(6)]
                   for j in range(6)])
  assert np.allclose(sinkhorn(circ, 0.3, 3), _softmax(circ / 0.3), rtol=0, atol=1e-12)

  # --- SwAV: against loops.
  for v, n, k, eps, it, t, gv in ((4, 5, 7, 0.05, 3, 0.1, 2),
                                  (2, 3, 4, 0.1, 3, 0.5, 2),
                                  (6, 8, 5, 0.05, 5, 0.1, 2),
                                  (3, 4, 6, 0.5, 1, 1.0, 1),
                                  (5, 6, 3, 0.1, 3, 0.2, 3)):
    sc = np.tanh(rng.normal(size=(v, n, k)))
    assert abs(swav(sc, eps, it, t, gv) - _swav_by_loops(sc, eps, it, t, gv)) < tol
  # Manual V=2 check: 0.5 * (CE(q0, p1) + CE(q1, p0)).
  sc = np.tanh(rng.normal(size=(2, 5, 7)))
  ce = lambda q, x: float(-np.mean(np.sum(q * _log_softmax(x / 0.1), -1)))
  want = 0.5 * (ce(sinkhorn(sc[0], 0.05, 3), sc[1]) + ce(sinkhorn(sc[1], 0.05, 3), sc[0]))
  assert abs(swav(sc, 0.05, 3, 0.1) - want) < tol
  # Multi-crop: each code is predicted by all V-1 other views, local ones too.
  sc = np.tanh(rng.normal(size=(4, 5, 7)))
  want = 0.0
  for i in range(2):
    q = sinkhorn(sc[i], 0.05, 3)
    want += sum(ce(q, sc[v]) for v in range(4) if v != i) / 3
  assert abs(swav(sc, 0.05, 3, 0.1) - want / 2) < tol
  # Each CE term is >= the entropy of its code (Gibbs), so the loss is >=
  # the mean code entropy. The local views enter only through log-softmax, so
  # a per-(view, sample) constant added to them changes nothing.
  qs = [sinkhorn(sc[i], 0.05, 3) for i in range(2)]
  ent = np.mean([float(np.mean(-np.sum(q * np.log(q), -1))) for q in qs])
  assert swav(sc, 0.05, 3, 0.1) >= ent - 1e-12
  loc = sc.copy()
  loc[2:] += rng.normal(size=(2, 5, 1))
  assert abs(swav(loc, 0.05, 3, 0.1) - swav(sc, 0.05, 3, 0.1)) < tol
  # global_views matters: with 1 only view 0's code is used.
  assert abs(swav(sc, 0.05, 3, 0.1, global_views=2) -
             swav(sc, 0.05, 3, 0.1, global_views=1)) > 1e-6
  print('oracles_multicrop self-check passed')


if __name__ == '__main__':
  _self_check()
