"""row_topk: the values of torch.topk from the m largest blocks, and the same indices when nothing ties."""

import torch

from ols.losses.row_topk import BLOCK, MIN_BLOCKS_PER_ENTRY, row_topk


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
