"""RoPE, ALiBi and relative bias against their defining properties and formulas."""

import math

import pytest
import torch

from transformer.attention import RotaryEmbedding, alibi_slopes, apply_rotary, sinusoidal_table
from transformer.attention.positional import RelativePositionBias, relative_position_bucket

from .helpers import assert_close


@pytest.mark.parametrize("fraction,scaling", [(1.0, None), (0.5, None), (1.0, "linear"), (1.0, "ntk")])
def test_rope_scores_depend_only_on_relative_offset(fraction, scaling):
    rope = RotaryEmbedding(16, fraction=fraction, scaling=scaling, scaling_factor=4.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(q_pos, k_pos):
        cq, sq = rope(torch.tensor([q_pos]))
        ck, sk = rope(torch.tensor([k_pos]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    for offset in (0, 3, 17):
        reference = score(offset, 0)
        for start in (5, 40, 1000):
            assert_close(score(start + offset, start), reference, atol=1e-4, rtol=1e-4)


def test_rope_partial_leaves_tail_untouched_and_scalings_change_frequencies():
    rope = RotaryEmbedding(16, fraction=0.5)
    assert rope.rot_dim == 8
    x = torch.randn(1, 2, 5, 16)
    y = apply_rotary(x, *rope.for_range(0, 5))
    assert torch.equal(y[..., 8:], x[..., 8:])
    assert_close(y[:, :, 0], x[:, :, 0])  # position 0 is the identity rotation
    base = RotaryEmbedding(16)
    linear = RotaryEmbedding(16, scaling="linear", scaling_factor=4.0)
    assert_close(linear(torch.tensor([8]))[0], base(torch.tensor([2]))[0])  # positions interpolated by 4
    ntk = RotaryEmbedding(16, scaling="ntk", scaling_factor=4.0)
    assert ntk.inv_freq[0] == base.inv_freq[0] and ntk.inv_freq[-1] < base.inv_freq[-1]


@pytest.mark.parametrize("heads", [8, 12, 6])
def test_alibi_slopes_follow_the_paper(heads):
    def paper(n):
        def power_of_2(n):
            start = 2 ** (-(2 ** -(math.log2(n) - 3)))
            return [start * start**i for i in range(n)]

        if math.log2(n).is_integer():
            return power_of_2(n)
        closest = 2 ** math.floor(math.log2(n))
        return power_of_2(closest) + paper(2 * closest)[0::2][: n - closest]

    assert_close(alibi_slopes(heads), torch.tensor(paper(heads)))
    if heads == 8:
        assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))


def test_relative_buckets_match_t5():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    relative = torch.arange(-200, 200)[None, :]
    for bidirectional in (True, False):
        ours = relative_position_bucket(relative, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        ref = t5.T5Attention._relative_position_bucket(relative, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(ours, ref)
    bias = RelativePositionBias(4, bidirectional=False)(5, 9, 4)
    assert bias.shape == (1, 4, 5, 9)


def test_sinusoidal_table_formula():
    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert math.isclose(table[pos, 2 * i].item(), math.sin(pos / 10000 ** (2 * i / 16)), rel_tol=1e-5)
    assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(pos / 10000 ** (2 * i / 16)), rel_tol=1e-5)
