"""k-means in one process (the collectives are the identity without a process group)."""
import itertools

import numpy as np
import pytest
import torch

from qbr_dist.quant.kmeans import _largest_error_points, kmeans, nearest


def blobs(per_blob=200, centres=((0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10)), spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(c, spread, size=(per_blob, len(c))) for c in centres])
    labels = np.repeat(np.arange(len(centres)), per_blob)
    order = rng.permutation(len(points))
    return torch.tensor(points[order], dtype=torch.float32), labels[order]


def test_separable_blobs_are_recovered():
    data, labels = blobs()
    result = kmeans(data, 4, seed=3)
    _, assigned = nearest(data, result.centroids)
    # each true blob maps to exactly one cluster and vice versa
    pairs = set(zip(labels.tolist(), assigned.tolist()))
    assert len(pairs) == 4 and len({a for _, a in pairs}) == 4
    assert sorted(result.counts.tolist()) == [200] * 4
    assert result.inertia < 800 * 3 * 0.3**2 * 1.2  # about the blobs' own variance


def test_inertia_matches_the_assignment_and_never_beats_the_true_centres_by_much():
    data, labels = blobs(seed=1)
    result = kmeans(data, 4, seed=0)
    distances, _ = nearest(data, result.centroids)
    assert result.inertia == pytest.approx(float(distances.double().sum()), rel=1e-6)
    true_centres = torch.stack([data[torch.from_numpy(labels == b)].mean(0) for b in range(4)])
    assert result.inertia <= float(nearest(data, true_centres)[0].sum()) * 1.0001


def test_chunk_size_does_not_change_the_result():
    data, _ = blobs(per_blob=50, seed=2)
    small = kmeans(data, 6, seed=5, chunk_size=7, iterations=10)
    whole = kmeans(data, 6, seed=5, chunk_size=10**6, iterations=10)
    assert torch.allclose(small.centroids, whole.centroids, atol=1e-5)


def test_same_seed_same_centroids_other_seed_other_start():
    data, _ = blobs(per_blob=30, seed=4)
    first, again = kmeans(data, 8, seed=1, iterations=1), kmeans(data, 8, seed=1, iterations=1)
    assert torch.equal(first.centroids, again.centroids)
    assert not torch.equal(first.centroids, kmeans(data, 8, seed=2, iterations=1).centroids)


def test_more_clusters_than_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="k-means: 5 clusters requested but only 3 vectors"):
        kmeans(torch.zeros(3, 2), 5)


def test_empty_clusters_are_reseeded_from_the_largest_errors():
    # 3 distinct points for 4 clusters: one cluster is always empty and keeps being re-seeded
    data = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    result = kmeans(data, 4, iterations=3)
    assert result.reseeded >= 1 and result.inertia == pytest.approx(0.0, abs=1e-9)


def test_largest_error_points_ties_go_to_the_lower_global_index():
    data = torch.tensor([[3.0], [0.0], [-3.0], [1.0]])
    picked = _largest_error_points(data, torch.tensor([[0.0]]), 2, offset=0, chunk_size=2)
    assert picked.flatten().tolist() == [3.0, -3.0]  # both at distance 9: rows 0 then 2


@pytest.mark.parametrize("n,k", list(itertools.product([10, 97], [1, 3])))
def test_counts_add_up(n, k):
    data = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    assert int(kmeans(data, k, iterations=3).counts.sum()) == n
