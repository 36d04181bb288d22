"""The one running-moments merge, checked against numpy on random streams."""

from __future__ import annotations

import numpy as np
import pytest

from models.moments import Moments, merge_moments


@pytest.mark.parametrize("chunks", [1, 2, 7, 50])
def test_merging_chunks_gives_numpy_mean_and_variance(chunks: int) -> None:
    rng = np.random.default_rng(chunks)
    values = rng.normal(1e6, 3.0, size=1000)  # a large offset: naive sums of squares fail
    count, mean, m2 = 0.0, 0.0, 0.0
    for part in np.array_split(values, chunks):
        part_mean = float(part.mean())
        count, mean, m2 = merge_moments(
            count, mean, m2, float(part.size), part_mean, float(((part - part_mean) ** 2).sum())
        )
    assert count == values.size
    assert type(mean) is float
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert m2 / count == pytest.approx(values.var(), rel=1e-9)


def test_columns_merge_elementwise_and_an_empty_column_stays_zero() -> None:
    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(5, 3)), rng.normal(size=(8, 3))
    counts_b = np.array([8.0, 8.0, 0.0])
    means_b = np.where(counts_b > 0, right.mean(axis=0), 0.0)
    m2_b = np.where(counts_b > 0, ((right - right.mean(axis=0)) ** 2).sum(axis=0), 0.0)
    zeros = np.zeros(3)
    count, mean, m2 = merge_moments(zeros, zeros, zeros, counts_b, means_b, m2_b)
    count, mean, m2 = merge_moments(
        count,
        mean,
        m2,
        np.full(3, 5.0),
        left.mean(axis=0),
        ((left - left.mean(axis=0)) ** 2).sum(0),
    )
    both = np.vstack([left, right])
    np.testing.assert_allclose(mean[:2], both.mean(axis=0)[:2], rtol=1e-12)
    np.testing.assert_allclose(m2[:2] / count[:2], both.var(axis=0)[:2], rtol=1e-12)
    np.testing.assert_allclose(mean[2], left[:, 2].mean(), rtol=1e-12)  # only the left rows
    empty = merge_moments(zeros, zeros, zeros, zeros, zeros, zeros)
    assert all(np.array_equal(part, zeros) for part in empty)


def test_moments_updates_batch_by_batch_like_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.exponential(2.0, size=300)
    moments = Moments()
    for part in np.array_split(values, 9):
        moments.update(part)
    assert moments.mean == pytest.approx(values.mean(), rel=1e-12)
    assert moments.std == pytest.approx(values.std(), rel=1e-9)
