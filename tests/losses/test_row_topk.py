"""row_topk: the values of torch.topk from the m largest blocks, and the same indices when nothing ties;
row_maxima: torch's row maxima and a column that holds them."""

import pytest
import torch

from ols.losses.row_topk import BLOCK, MIN_BLOCKS_PER_ENTRY, row_maxima, row_topk


def _long_rows(m, extra=37, b=6, seed=0):
    k_all = MIN_BLOCKS_PER_ENTRY * m * BLOCK + extra  # the block path, with a tail shorter than a block
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k_all, generator=g) * 3


def test_long_rows_give_torch_topk_exactly():
    m = 5
    z = _long_rows(m)
    z[0, -3] = 50.0  # the largest entry of row 0 sits in the tail
    z[1, :m] = 40.0 + torch.arange(m).float()  # row 1: all of its top m in the first block
    z[2, torch.arange(m) * BLOCK * 7] = 30.0 + torch.arange(m).float()  # row 2: m different blocks
    values, index = row_topk(z, m)
    want_v, want_i = z.topk(m, dim=1)
    assert torch.equal(values, want_v) and torch.equal(index, want_i)
    assert index[0, 0] == z.shape[1] - 3


def test_ties_keep_the_values_and_give_valid_distinct_indices():
    m = 4
    z = _long_rows(m)
    z[0] = 0.0  # every class ties (a zero-initialised head)
    z[1, ::2] = 7.0  # half the row ties at its maximum
    values, index = row_topk(z, m)
    assert torch.equal(values, z.topk(m, dim=1).values)
    assert torch.equal(z.gather(1, index), values)
    assert all(len(set(row.tolist())) == m for row in index)


def test_nan_and_inf_rank_as_torch_topk_ranks_them():
    m = 3
    z = _long_rows(m)
    z[0, 100] = float("nan")
    z[1, 200] = float("inf")
    z[2, 300] = float("-inf")
    values, index = row_topk(z, m)
    want_v, want_i = z.topk(m, dim=1)
    assert torch.equal(index, want_i)
    torch.testing.assert_close(values, want_v, equal_nan=True)


def test_short_rows_are_plain_topk():
    z = torch.randn(4, MIN_BLOCKS_PER_ENTRY * 6 * BLOCK - 1)
    values, index = row_topk(z, 6)
    want_v, want_i = z.topk(6, dim=1)
    assert torch.equal(values, want_v) and torch.equal(index, want_i)


def test_a_non_contiguous_input_gives_the_same_result():
    m = 2
    z = _long_rows(m, b=5)
    t = z.t().contiguous().t()  # same values, column-major strides
    assert not t.is_contiguous()
    values, index = row_topk(t, m)
    assert torch.equal(values, z.topk(m, dim=1).values) and torch.equal(index, z.topk(m, dim=1).indices)


@pytest.mark.parametrize("k_all", [7, BLOCK, 3 * BLOCK, 3 * BLOCK + 5, MIN_BLOCKS_PER_ENTRY * 2 * BLOCK + 37])
def test_row_maxima_are_amax_at_a_column_that_holds_them(k_all):
    g = torch.Generator().manual_seed(k_all)
    z = torch.randn(6, k_all, generator=g)
    z[0, -1] = 20.0  # in the tail (or the last block when K is a multiple of BLOCK)
    z[1, 0] = 20.0  # first column
    z[2] = 0.0  # every column ties
    z[3, :] = float("-inf")
    z[3, k_all // 2] = -1.0  # one finite entry among -inf
    value, column, blocks = row_maxima(z)
    assert torch.equal(value, z.amax(1))
    assert torch.equal(z.gather(1, column.unsqueeze(1)).squeeze(1), value)
    assert column[0] == k_all - 1 and column[1] == 0 and column[3] == k_all // 2
    n = k_all // BLOCK
    assert torch.equal(blocks, z[:, :n * BLOCK].reshape(6, n, BLOCK).amax(2))


def test_row_maxima_take_a_nan_as_the_largest_value():
    z = torch.randn(3, 3 * BLOCK + 5)
    z[0, 10] = float("nan")  # in a block
    z[1, -2] = float("nan")  # in the tail
    value, column, _ = row_maxima(z)
    assert torch.isnan(value[:2]).all() and column.tolist()[:2] == [10, z.shape[1] - 2]
    assert value[2] == z[2].max()


@pytest.mark.parametrize("blocked", [True, False])
def test_chosen_rows_give_the_topk_of_those_rows(blocked):
    m = 3
    z = _long_rows(m, b=9) if blocked else torch.randn(9, 5 * BLOCK + 3)
    rows = torch.tensor([7, 0, 4])
    for maxima in (None, row_maxima(z)):
        values, index = row_topk(z, m, rows, maxima)
        want_v, want_i = z[rows].topk(m, dim=1)
        assert torch.equal(values, want_v) and torch.equal(index, want_i)
    values, index = row_topk(z, m, rows[:0])
    assert values.shape == (0, m) and index.shape == (0, m)
