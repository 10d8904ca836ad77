"""The layer stack's layouts (upmp.data.layout): every conversion checked element by element
against the layouts' definitions, for numpy arrays and torch tensors."""
import numpy as np
import pytest
import torch

from upmp.data.layout import (btld_to_bdlt, dlt_to_ltd, ltd_to_dlt, ltd_to_tld, matrix_to_stack, merge_layers,
                              pad_stacks, split_layers, stack_to_matrix, tld_to_ltd)

L, T, D, B = 2, 3, 4, 2


def stack():
    return np.arange(L * T * D, dtype=np.float32).reshape(L, T, D) * 1.5 - 7  # (L, T, D)


def test_matrix_layout():
    s = stack()
    mat = stack_to_matrix(s)
    assert mat.shape == (T, L * D) and mat.flags.c_contiguous
    for l in range(L):
        for t in range(T):
            for d in range(D):
                assert mat[t, l * D + d] == s[l, t, d]  # column l*D + d of row t
    np.testing.assert_array_equal(matrix_to_stack(mat, L), s)
    with pytest.raises(ValueError, match="not a multiple of 3 layers"):
        matrix_to_stack(mat, 3)
    assert stack_to_matrix(np.zeros((L, 0, D), np.float32)).shape == (0, L * D)  # an empty stack


@pytest.mark.parametrize("to", [np.asarray, torch.from_numpy])
def test_conversions_move_every_element_where_the_layout_says(to):
    s = stack()
    frames = ltd_to_tld(to(s))
    row = ltd_to_dlt(to(s))
    batch = to(np.stack([s.transpose(1, 0, 2), -s.transpose(1, 0, 2)]))  # (B, T, L, D) built by numpy itself
    model = btld_to_bdlt(batch)
    assert tuple(frames.shape) == (T, L, D) and tuple(row.shape) == (D, L, T) and tuple(model.shape) == (B, D, L, T)
    for l in range(L):
        for t in range(T):
            for d in range(D):
                assert frames[t, l, d] == s[l, t, d] and row[d, l, t] == s[l, t, d]
                assert model[0, d, l, t] == s[l, t, d] and model[1, d, l, t] == -s[l, t, d]
    np.testing.assert_array_equal(np.asarray(tld_to_ltd(frames)), s)
    np.testing.assert_array_equal(np.asarray(dlt_to_ltd(row)), s)
    mat = to(stack_to_matrix(s))
    split = split_layers(mat, L)
    assert tuple(split.shape) == (T, L, D) and split[2, 1, 3] == s[1, 2, 3]
    np.testing.assert_array_equal(np.asarray(merge_layers(split)), np.asarray(mat))
    assert tuple(split_layers(to(np.zeros((B, T, L * D), np.float32)), L, D).shape) == (B, T, L, D)
    with pytest.raises((ValueError, RuntimeError)):  # a width that is not L x the given D
        split_layers(mat, L, D + 1)


def test_pad_stacks():
    a, b = stack(), stack()[:, :1] + 100
    x, lens = pad_stacks([a, b])
    assert x.dtype == np.float32 and x.shape == (2, D, L, T) and lens.tolist() == [T, 1] and lens.dtype == np.int64
    np.testing.assert_array_equal(x[0], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(x[1, :, :, :1], b.transpose(2, 0, 1))
    assert not x[1, :, :, 1:].any()  # the padding is zeros
