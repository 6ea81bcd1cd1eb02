"""add_rows: the accumulation of Eq. (5), eager and as one opaque call under torch.compile, at every width."""

import pytest
import torch

from ols.utils.index_add import add_rows


def _rows(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.tensor([0, 3, 3, 1, 4, 3, 0, 2, 4])  # repeated rows add up
    return torch.randn(5, k, generator=g), rows, torch.rand(9, k, generator=g)


def test_eager_adds_each_row_to_its_target_row():
    sums, rows, values = _rows(6)
    expected = sums.clone()
    for i, r in enumerate(rows.tolist()):  # the plain loop
        expected[r] += values[i]
    add_rows(sums, rows, values)
    torch.testing.assert_close(sums, expected)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.library, "register_fake"), reason="ols::add_rows needs torch >= 2.4")
@pytest.mark.parametrize("k", [3, 300])
def test_compiled_call_is_the_opaque_op_and_equals_eager(k):
    sums, rows, values = _rows(k)
    eager = sums.clone()
    add_rows(eager, rows, values)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(add_rows, backend=backend, fullgraph=True)(sums, rows, values)  # the backend runs the graph
    assert torch.ops.ols.add_rows.default in seen, seen
    torch.testing.assert_close(sums, eager, rtol=0, atol=0)  # the same ATen kernel on the same inputs
