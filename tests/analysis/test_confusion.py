"""Confusion counts, per-class accuracy, and exact DDP-style merging of every accumulator."""

import pytest
import torch

from kdlab.analysis.stats import ConfusionCounts, PredictionStats, accuracy, per_class_accuracy, synced_states


def test_per_class_accuracy_hand_example():
    # true:      0  0  1  1  1  2   (no image of class 3)
    # predicted: 0  1  1  1  0  2
    # class 0: 1 of 2 right; class 1: 2 of 3; class 2: 1 of 1; class 3: no images -> None; overall 4/6
    metric = ConfusionCounts(4)
    metric.update(torch.tensor([0, 1, 1, 1, 0, 2]), torch.tensor([0, 0, 1, 1, 1, 2]))
    counts = metric.compute()
    assert counts.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]  # [true, predicted]
    assert per_class_accuracy(counts) == [0.5, 2 / 3, 1.0, None]
    assert accuracy(counts) == pytest.approx(4 / 6)


def test_confusion_refuses_logits():
    with pytest.raises(ValueError, match="argmax the logits first"):
        ConfusionCounts(10).update(torch.randn(4, 10), torch.zeros(4, dtype=torch.long))


def _batches(seed: int, n: int = 300, classes: int = 10):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (n,), generator=gen)
    student = torch.randn(n, classes, generator=gen) * 2 + 3 * torch.nn.functional.one_hot(target, classes)
    teacher = torch.randn(n, classes, generator=gen) + 5 * torch.nn.functional.one_hot(target, classes)
    return student, target, teacher


def _fed(*parts):
    stats = PredictionStats(10)
    for student, target, teacher in parts:
        for lo in range(0, len(target), 64):  # several batches per "rank"
            stats.update(student[lo : lo + 64], target[lo : lo + 64], teacher[lo : lo + 64])
    return stats


def test_two_ranks_merged_equal_one_pass_over_all_images():
    """Rank 0 sees images [0, 150), rank 1 [150, 300): merged states == one pass over all 300."""
    student, target, teacher = _batches(0)
    whole = _fed((student, target, teacher))
    rank0, rank1 = (
        _fed((student[:150], target[:150], teacher[:150])),
        _fed((student[150:], target[150:], teacher[150:])),
    )
    for name, metric in rank0.metrics.items():
        metric.merge_state(rank1.metrics[name])
    merged, single = rank0.results(), whole.results()
    assert merged["n_test"] == single["n_test"] == 300  # each image once
    assert merged["student"]["confusion"] == single["student"]["confusion"]
    assert merged["disagreements"] == single["disagreements"] > 0
    assert merged["student"]["ece"] == pytest.approx(single["student"]["ece"], abs=1e-12)
    ours, theirs = merged["teacher"]["reliability"], single["teacher"]["reliability"]
    assert ours["count"] == theirs["count"]
    for key in ("accuracy", "confidence"):
        assert [v is None for v in ours[key]] == [v is None for v in theirs[key]]
        assert [v for v in ours[key] if v is not None] == pytest.approx([v for v in theirs[key] if v is not None])


def test_sync_sums_each_state_across_ranks():
    """What DDP does at the end: all_gather every state, reduce with its dist_reduce_fx (sum)."""
    student, target, teacher = _batches(1)
    rank0, rank1 = (
        _fed((student[:100], target[:100], teacher[:100])),
        _fed((student[100:], target[100:], teacher[100:])),
    )
    whole = _fed((student, target, teacher))
    for name, metric in rank0.metrics.items():
        other = rank1.metrics[name].metric_state

        def gather(tensor, group=None, _other=other, _metric=metric):  # [this rank's, the other rank's]
            return [tensor, next(v for k, v in _other.items() if getattr(_metric, k) is tensor)]

        local = synced_states(metric)  # no process group: just this rank's states
        synced = synced_states(metric, dist_sync_fn=gather, distributed_available=lambda: True)
        expected = synced_states(whole.metrics[name])
        for key, value in expected.items():
            torch.testing.assert_close(synced[key], value, rtol=1e-12, atol=1e-9)
        after = synced_states(metric)  # the local states are back afterwards (unsynced)
        assert all(torch.equal(after[key], local[key]) for key in local)
        assert not torch.equal(synced[next(iter(local))], local[next(iter(local))])
