"""add_rows: the accumulation of Eq. (5), eager and as one opaque call under torch.compile."""

import pytest
import torch

from ols.losses.row_sums import OPAQUE_FROM_COLUMNS, add_rows


def _rows(k, b=9, r=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.tensor([0, 3, 3, 1, 4, 3, 0, 2, 4])[:b]  # repeated rows add up
    return torch.randn(r, k, generator=g), rows, torch.rand(b, k, generator=g)


def test_eager_adds_each_row_to_its_target_row():
    sums, rows, values = _rows(6)
    expected = sums.clone()
    for i, r in enumerate(rows.tolist()):  # the plain loop
        expected[r] += values[i]
    add_rows(sums, rows, values)
    torch.testing.assert_close(sums, expected)


def _graph_targets(fn, *args):
    seen = []

    def backend(gm, example_inputs):
        seen.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return seen


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.library, "register_fake"), reason="ols::add_rows needs torch >= 2.4")
@pytest.mark.parametrize("k", [OPAQUE_FROM_COLUMNS - 1, OPAQUE_FROM_COLUMNS, 300])
def test_compiled_call_is_the_opaque_op_from_the_threshold_and_equals_eager(k):
    sums, rows, values = _rows(k)
    eager = sums.clone()
    add_rows(eager, rows, values)
    targets = _graph_targets(add_rows, sums, rows, values)  # the recording backend runs the graph too
    assert (torch.ops.ols.add_rows.default in targets) == (k >= OPAQUE_FROM_COLUMNS), targets
    torch.testing.assert_close(sums, eager, rtol=0, atol=0)  # the same ATen kernel on the same inputs
