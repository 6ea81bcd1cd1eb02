"""Han et al.'s prototypes and label correction against the paper's definitions written as loops.

There is no official code: the reference is Sec. 3.3 of arXiv 1908.02160 read literally, element by
element (``S_c`` the value ranked at the top 40 % of ``S``, ``rho_i = sum_j sign(S_ij - S_c)``,
``eta_i`` the largest similarity to a denser sample, or the smallest similarity for the densest; the
``p`` densest with ``eta < 0.95``; ``y^ = argmax_c`` mean similarity to class ``c``'s prototypes).
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import paper_prototypes
from ols import create_loss
from ols.losses.noisy.self_learning import class_similarity, density_threshold, select_prototypes

K = 3


@pytest.mark.parametrize("seed,p", [(0, 8), (1, 3), (2, 8)])
def test_the_prototypes_are_the_papers_densest_distinct_samples(seed, p):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 6, generator=g) * 3
    features = centres[torch.randint(0, 4, (40,), generator=g)] + torch.randn(40, 6, generator=g)
    chosen = select_prototypes(features, count=p)
    assert chosen.tolist() == paper_prototypes(features, p)
    assert 1 <= len(chosen) <= p


def test_the_threshold_is_the_entry_ranked_at_the_top_forty_percent():
    s = torch.arange(25.0).view(5, 5)
    assert float(density_threshold(s, 0.4)) == 15.0  # the 10th largest of 25


def test_each_sample_takes_the_class_whose_prototypes_it_is_most_like_on_average():
    g = torch.Generator().manual_seed(3)
    prototypes, owner = torch.randn(7, 4, generator=g), torch.tensor([0, 0, 1, 1, 1, 2, 2])
    features = torch.randn(9, 4, generator=g)
    sigma = class_similarity(features, prototypes, owner, K)
    for i in range(9):
        for c in range(K):
            sims = [float(F.cosine_similarity(features[i], prototypes[j], dim=0)) for j in range(7)
                    if owner[j] == c]
            assert float(sigma[i, c]) == pytest.approx(sum(sims) / len(sims), abs=1e-6)
    no_class_two = class_similarity(features, prototypes[:5], owner[:5], K)
    assert torch.isinf(no_class_two[:, 2]).all() and (no_class_two.argmax(1) < 2).all()


def test_the_loss_mixes_the_noisy_and_the_corrected_label_once_corrected():
    crit = create_loss("self_learning", K, num_samples=6, epochs=4, corrected_weight=0.5).train()
    z, y, idx = torch.randn(4, K), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 2, 3, 5])
    torch.testing.assert_close(crit(z, y, index=idx), F.cross_entropy(z, y))  # nothing corrected yet
    assert crit.corrected_labels() is None
    crit.set_corrected(torch.tensor([0, 2, 3, 5]), torch.tensor([1, 1, 2, 2]))
    expected = 0.5 * F.cross_entropy(z, y) + 0.5 * F.cross_entropy(z, torch.tensor([1, 1, 2, 2]))
    torch.testing.assert_close(crit(z, y, index=idx), expected)
    assert crit.corrected_labels().tolist() == [1, -1, 1, 2, -1, 2]


def test_with_ols_the_statistics_follow_the_corrected_labels():
    crit = create_loss("self_learning", K, num_samples=4, epochs=4, base="ols").train()
    crit.set_corrected(torch.arange(4), torch.tensor([2, 2, 1, 0]))
    z = torch.tensor([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    crit(z, torch.tensor([0, 0, 0, 0]), index=torch.arange(4))
    probs = z.softmax(1)
    expected = torch.zeros(K, K)
    for row, label in ((0, 2), (2, 1), (3, 0)):  # row 1 predicts 0 but its corrected label is 2
        expected[label] += probs[row]
    torch.testing.assert_close(crit.base.store.sums[:K], expected)
