"""Arazo et al.'s beta mixture against a plain re-implementation of the official ``utils.py``.

The reference below follows ``PaulAlbert31/LabelNoiseCorrection`` step by step with scipy's beta density
(``track_training_loss``'s percentiles and float32 range, ``BetaMixture1D.fit``/``posterior``/
``create_lookup``/``look_lookup``, ``compute_probabilities_batch``'s clamps); ``ols`` computes the
density from ``lgamma`` itself.
"""

import numpy as np
import pytest
import scipy.stats as stats
import torch

from ols.losses.noisy.beta_mixture import BetaMixture, fit_losses, lookup_tensor, noisy_probability


class OfficialBMM:
    def __init__(self, max_iters=10):
        self.alphas, self.betas = np.array([1.0, 2.0]), np.array([2.0, 1.0])
        self.weight = np.array([0.5, 0.5])
        self.max_iters, self.eps_nan, self.lookup_resolution = max_iters, 1e-12, 100

    def weighted_likelihood(self, x, y):
        return self.weight[y] * stats.beta.pdf(x, self.alphas[y], self.betas[y])

    def posterior(self, x, y):
        return self.weighted_likelihood(x, y) / (sum(self.weighted_likelihood(x, k) for k in range(2))
                                                 + self.eps_nan)

    def fit(self, x):
        x = np.copy(x)
        x[x >= 1 - 1e-4] = 1 - 1e-4
        x[x <= 1e-4] = 1e-4
        for _ in range(self.max_iters):
            r = np.array([self.weighted_likelihood(x, k) for k in range(2)])
            r[r <= self.eps_nan] = self.eps_nan
            r /= r.sum(axis=0)
            for k in range(2):
                mean = np.sum(r[k] * x) / np.sum(r[k])
                var = np.sum(r[k] * (x - mean) ** 2) / np.sum(r[k])
                self.alphas[k] = mean * (mean * (1 - mean) / var - 1)
                self.betas[k] = self.alphas[k] * (1 - mean) / mean
            self.weight = r.sum(axis=1)
            self.weight /= self.weight.sum()
        return self

    def create_lookup(self, y):
        x_l = np.linspace(0 + 1e-4, 1 - 1e-4, self.lookup_resolution)
        lookup_t = self.posterior(x_l, y)
        lookup_t[np.argmax(lookup_t):] = lookup_t.max()
        self.lookup = lookup_t

    def look_lookup(self, x):
        x_i = np.array((self.lookup_resolution * x).astype(int))
        x_i[x_i < 0] = 0
        x_i[x_i == self.lookup_resolution] = self.lookup_resolution - 1
        return self.lookup[x_i]


def official_fit(loss_tr):
    max_perc, min_perc = np.percentile(loss_tr, 95), np.percentile(loss_tr, 5)
    kept = loss_tr[(loss_tr <= max_perc) & (loss_tr >= min_perc)]
    max_loss = torch.FloatTensor([max_perc])
    min_loss = torch.FloatTensor([min_perc]) + 10e-6
    kept = (kept - min_loss.numpy()) / (max_loss.numpy() - min_loss.numpy() + 1e-6)
    kept[kept >= 1] = 1 - 10e-4
    kept[kept <= 0] = 10e-4
    bmm = OfficialBMM().fit(kept)
    bmm.create_lookup(1)
    return bmm, min_loss, max_loss


def official_batch_probability(batch_losses, bmm, min_loss, max_loss):
    batch_losses = (batch_losses - min_loss) / (max_loss - min_loss + 1e-6)
    batch_losses[batch_losses >= 1] = 1 - 10e-4
    batch_losses[batch_losses <= 0] = 10e-4
    b = torch.FloatTensor(bmm.look_lookup(batch_losses.numpy()))
    b[b <= 1e-4] = 1e-4
    b[b >= 1 - 1e-4] = 1 - 1e-4
    return b


def _losses(seed=0, n=2000, noisy=0.4):
    rng = np.random.default_rng(seed)
    clean = rng.gamma(1.5, 0.25, size=int(n * (1 - noisy)))
    wrong = rng.gamma(6.0, 0.6, size=n - len(clean))
    return np.concatenate([clean, wrong])


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fit_lookup_and_batch_probabilities_equal_the_official_code(seed):
    losses = _losses(seed)
    ref, min_loss, max_loss = official_fit(losses.copy())
    mixture, low, high = fit_losses(losses)
    np.testing.assert_allclose(mixture.alphas, ref.alphas, rtol=1e-9)
    np.testing.assert_allclose(mixture.betas, ref.betas, rtol=1e-9)
    np.testing.assert_allclose(mixture.weights, ref.weight, rtol=1e-9)
    assert low == pytest.approx(float(min_loss)) and high == pytest.approx(float(max_loss))
    np.testing.assert_allclose(mixture.lookup(1), ref.lookup, rtol=1e-9, atol=1e-300)

    batch = torch.as_tensor(np.concatenate([losses[:40], losses[-40:], [0.0, 50.0]]), dtype=torch.float32)
    mine = noisy_probability(batch, lookup_tensor(mixture, torch.device("cpu")), torch.tensor(low),
                             torch.tensor(high))
    expected = official_batch_probability(batch.clone(), ref, min_loss, max_loss)
    torch.testing.assert_close(mine, expected)
    # the high-loss component is the noisy one: the wrong labels' losses read as likely noisy
    assert mine[:40].mean() < 0.1 and mine[40:80].mean() > 0.5


def test_the_table_never_falls_once_it_has_peaked():
    table = BetaMixture((1.5, 4.0), (6.0, 1.2), (0.6, 0.4)).lookup(1)
    assert np.all(np.diff(table) >= 0)
