"""YouTube-8M metrics: hand-computed cases and tie rules."""

import numpy as np
import pytest

from nextvlad.metrics import (
    average_precision_per_class,
    gap,
    hit_at_one,
    mean_average_precision,
    perr,
    segment_average_precision,
    segment_mean_average_precision,
    top_k,
)

# 3 videos x 5 classes; every score distinct.
PREDICTIONS = np.array(
    [
        [0.90, 0.80, 0.30, 0.20, 0.10],
        [0.15, 0.70, 0.60, 0.05, 0.55],
        [0.50, 0.25, 0.35, 0.85, 0.45],
    ],
    dtype=np.float32,
)
LABELS = np.array(
    [
        [1, 0, 0, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1],
    ]
)
# 5 positive labels in total.
#
# GAP@20 (all 15 pairs), sorted by score:
#   rank  score  video/class  positive  hits  precision
#     1   0.90   v0 c0        yes       1     1/1
#     2   0.85   v2 c3        yes       2     2/2
#     3   0.80   v0 c1        no
#     4   0.70   v1 c1        no
#     5   0.60   v1 c2        yes       3     3/5
#     6   0.55   v1 c4        no
#     7   0.50   v2 c0        no
#     8   0.45   v2 c4        yes       4     4/8
#     9   0.35   v2 c2 ... 11 0.25 v2 c1  no
#    12   0.20   v0 c3        yes       5     5/12
#    13-15 (0.15, 0.10, 0.05)  no
#   each hit adds delta-recall 1/5:
#   GAP = (1 + 1 + 3/5 + 4/8 + 5/12) / 5 = (60 + 60 + 36 + 30 + 25) / 300 = 211/300
GAP_ALL = 211 / 300
#
# GAP@2: top-2 per video -> v0 (0.90 yes, 0.80 no), v1 (0.70 no, 0.60 yes), v2 (0.85 yes, 0.50 no).
#   sorted: 0.90 yes (1/1), 0.85 yes (2/2), 0.80 no, 0.70 no, 0.60 yes (3/5), 0.50 no
#   The recall denominator stays 5 (v0 c3 and v2 c4 are outside the top-2 but still count):
#   GAP@2 = (1 + 1 + 3/5) / 5 = 13/25
GAP_TOP2 = 13 / 25
#
# Hit@1: top-1 classes are c0 (v0, yes), c1 (v1, no), c3 (v2, yes) -> 2/3.
# PERR: v0 has L=2, top-2 = {c0, c1} -> 1/2; v1 has L=1, top-1 = {c1} -> 0;
#       v2 has L=2, top-2 = {c3, c0} -> 1/2.  Mean = 1/3.
# AP per class (videos ranked by that class's score):
#   c0: v0 0.90 yes, v2 0.50, v1 0.15          -> 1
#   c1: no positive                             -> undefined (NaN), excluded from mAP
#   c2: v1 0.60 yes, v2 0.35, v0 0.30          -> 1
#   c3: v2 0.85 yes, v0 0.20 yes, v1 0.05      -> (1 + 2/2) / 2 = 1
#   c4: v1 0.55 no, v2 0.45 yes, v0 0.10       -> 1/2
#   mAP = (1 + 1 + 1 + 1/2) / 4 = 7/8


def test_gap_matches_the_hand_computed_table():
    assert gap(PREDICTIONS, LABELS) == pytest.approx(GAP_ALL, abs=1e-12)
    assert gap(PREDICTIONS, LABELS, top_k=5) == pytest.approx(GAP_ALL, abs=1e-12)


def test_positives_outside_the_top_k_still_count_in_recall():
    assert gap(PREDICTIONS, LABELS, top_k=2) == pytest.approx(GAP_TOP2, abs=1e-12)
    assert gap(PREDICTIONS, LABELS, top_k=2) < gap(PREDICTIONS, LABELS)


def test_gap_accepts_bool_int_and_float_labels():
    for labels in (LABELS.astype(bool), LABELS.astype(np.int64), LABELS.astype(np.float32)):
        assert gap(PREDICTIONS, labels) == pytest.approx(GAP_ALL, abs=1e-12)


def test_gap_edge_cases():
    # Nothing to recall -> 0 (as the YouTube-8M code does).
    assert gap(PREDICTIONS, np.zeros_like(LABELS)) == 0.0
    # Perfect ranking of every positive -> 1.
    assert gap(LABELS.astype(np.float32), LABELS) == pytest.approx(1.0)
    # A single positive ranked last among 15 predictions -> precision 1/15.
    labels = np.zeros_like(LABELS)
    labels[1, 3] = 1  # score 0.05, the lowest
    assert gap(PREDICTIONS, labels) == pytest.approx(1 / 15)
    # ... and outside the top-4 of its video it is never retrieved -> 0.
    assert gap(PREDICTIONS, labels, top_k=4) == 0.0


def test_gap_ties_are_broken_by_video_order():
    # Equal scores: the pair of the earlier video is ranked first.
    scores = np.array([[0.5], [0.5]])
    assert gap(scores, np.array([[1], [0]])) == pytest.approx(1.0)  # positive first: precision 1/1
    assert gap(scores, np.array([[0], [1]])) == pytest.approx(0.5)  # positive second: precision 1/2


def test_top_k_sorts_descending_and_breaks_ties_by_lower_class_id():
    predictions = np.array(
        [
            [0.5, 0.9, 0.5, 0.5, 0.1],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.1, 0.2, 0.3, 0.4, 0.5],
        ]
    )
    indices, scores = top_k(predictions, 3)
    np.testing.assert_array_equal(indices, [[1, 0, 2], [0, 1, 2], [4, 3, 2]])
    np.testing.assert_array_equal(scores, [[0.9, 0.5, 0.5], [0.0, 0.0, 0.0], [0.5, 0.4, 0.3]])
    assert indices.dtype == np.int64
    # k larger than the number of classes keeps them all.
    indices, _ = top_k(predictions, 20)
    np.testing.assert_array_equal(indices[0], [1, 0, 2, 3, 4])


def test_top_k_agrees_with_a_stable_full_sort_on_heavily_tied_scores():
    rng = np.random.default_rng(3)
    predictions = rng.integers(0, 4, size=(50, 300)).astype(np.float32) / 4  # only 4 distinct values
    indices, scores = top_k(predictions, 20)
    expected = np.argsort(-predictions, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(predictions, expected, axis=1))


def test_hit_at_one_perr_and_map_hand_cases():
    assert hit_at_one(PREDICTIONS, LABELS) == pytest.approx(2 / 3)
    assert perr(PREDICTIONS, LABELS) == pytest.approx(1 / 3)
    np.testing.assert_allclose(average_precision_per_class(PREDICTIONS, LABELS), [1, np.nan, 1, 1, 0.5])
    # The class without positives (c1) is excluded, not counted as 0 (which would give 0.7).
    assert mean_average_precision(PREDICTIONS, LABELS) == pytest.approx(7 / 8)


def test_perr_skips_unlabeled_videos_and_hit_at_one_counts_them():
    labels = LABELS.copy()
    labels[1] = 0  # v1 now has no labels
    # PERR over v0 and v2 only: (1/2 + 1/2) / 2.
    assert perr(PREDICTIONS, labels) == pytest.approx(0.5)
    # Hit@1 still divides by all three videos: v0 and v2 hit.
    assert hit_at_one(PREDICTIONS, labels) == pytest.approx(2 / 3)
    assert perr(PREDICTIONS, np.zeros_like(labels)) == 0.0
    assert mean_average_precision(PREDICTIONS, np.zeros_like(labels)) == 0.0


def test_average_precision_over_all_scores_matches_the_textbook_definition():
    rng = np.random.default_rng(0)
    predictions = rng.random((40, 6))
    labels = rng.random((40, 6)) < 0.3
    ap = average_precision_per_class(predictions, labels, top_k=None)
    for c in range(6):
        ranked = labels[np.argsort(-predictions[:, c]), c]
        positive_ranks = np.flatnonzero(ranked) + 1  # 1-based ranks of the positives
        expected = np.mean(np.arange(1, positive_ranks.size + 1) / positive_ranks)
        assert ap[c] == pytest.approx(expected)


def test_map_counts_only_each_videos_top_k_predictions_by_hand():
    # 3 videos x 4 classes, k = 2. Top-2 per video: v0 {c0 .9, c1 .8}, v1 {c2 .7, c0 .6}, v2 {c1 .95, c3 .5}.
    predictions = np.array(
        [[0.9, 0.8, 0.1, 0.2], [0.6, 0.05, 0.7, 0.3], [0.4, 0.95, 0.3, 0.5]], dtype=np.float32
    )
    labels = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [1, 0, 1, 0]])
    # c0: listed for v0 (.9, hit) and v1 (.6, hit); its third positive, v2, ranks c0 third (outside its
    #     top 2) and only lowers the AP through the denominator: (1/1 + 2/2) / 3.
    # c1: listed for v2 (.95) and v0 (.8), no positives -> undefined, left out of the mean.
    # c2: listed for v1 (.7, miss) only; its positive v2 is outside v2's top 2: 0 / 1.
    # c3: listed for v2 (.5, miss); its positive v1 ranks c3 third: 0 / 1.
    ap = average_precision_per_class(predictions, labels, top_k=2)
    np.testing.assert_allclose(ap, [2 / 3, np.nan, 0.0, 0.0])
    assert mean_average_precision(predictions, labels, top_k=2) == pytest.approx((2 / 3) / 3)
    # Ranking every score instead, c0's third positive counts: (1 + 1 + 1) / 3 = 1 and c2 finds v2 at
    # rank 2 (1/2); the dataset's top-k definition is lower, as it should be.
    np.testing.assert_allclose(
        average_precision_per_class(predictions, labels, top_k=None), [1, np.nan, 0.5, 0.5]
    )


def _starter_code_map(predictions, labels, k):
    """An independent transcription of the YouTube-8M starter code's mAP (eval_util.top_k_by_class ->
    MeanAveragePrecisionCalculator): per class, the (score, label) pairs of the videos whose top-k holds
    the class; AP = sum of precision at each hit / all positives of the class; classes without
    positives skipped; mean over the rest. Scores here are distinct, so tie order does not matter."""
    num_classes = predictions.shape[1]
    pairs = [[] for _ in range(num_classes)]
    for video in range(predictions.shape[0]):
        for c in np.argsort(-predictions[video])[:k]:
            pairs[c].append((predictions[video, c], labels[video, c]))
    aps = []
    for c in range(num_classes):
        positives = labels[:, c].sum()
        if positives == 0:
            continue
        ranked = [label for _, label in sorted(pairs[c], key=lambda pair: -pair[0])]
        hits, total = 0, 0.0
        for rank, label in enumerate(ranked, start=1):
            if label:
                hits += 1
                total += hits / rank
        aps.append(total / positives)
    return float(np.mean(aps))


@pytest.mark.parametrize(("num_videos", "num_classes", "k"), [(300, 50, 20), (200, 400, 20), (60, 30, 5)])
def test_map_equals_the_starter_codes_algorithm(num_videos, num_classes, k):
    rng = np.random.default_rng(num_classes)
    predictions = rng.random((num_videos, num_classes))
    labels = rng.random((num_videos, num_classes)) < 3 / num_classes + 0.02
    assert mean_average_precision(predictions, labels, top_k=k) == pytest.approx(
        _starter_code_map(predictions, labels, k), abs=1e-12
    )


@pytest.mark.parametrize(
    ("predictions", "labels", "match"),
    [
        (PREDICTIONS, LABELS[:2], r"labels shape \(2, 5\) does not match predictions shape \(3, 5\)"),
        (PREDICTIONS, LABELS * 2, r"labels must be 0/1; got 2"),
        (PREDICTIONS[0], LABELS[0], r"2-D array.*got shape \(5,\)"),
        (np.where(LABELS == 1, np.nan, PREDICTIONS), LABELS, r"non-finite value \(nan at video 0, class 0\)"),
    ],
)
def test_bad_inputs_are_reported_with_the_offending_value(predictions, labels, match):
    with pytest.raises(ValueError, match=match):
        gap(predictions, labels)


def test_bad_k_is_reported():
    with pytest.raises(ValueError, match=r"top_k must be a positive integer; got 0"):
        gap(PREDICTIONS, LABELS, top_k=0)
    with pytest.raises(ValueError, match=r"k must be a positive integer; got 2.5"):
        top_k(PREDICTIONS, 2.5)


# ------------------------------------------------------------------------------------------------
# Segment mAP (2019 task)
# ------------------------------------------------------------------------------------------------


def test_segment_map_by_hand():
    # 5 segments x 2 classes. Ratings: class 0 -> s0 positive, s2 negative, s4 positive; class 1 -> s1
    # negative only (no positive: undefined, left out of the mean).
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.95, 0.2], [0.5, 0.3], [0.4, 0.6]])
    segments, classes, ratings = [0, 2, 4, 1], [0, 0, 0, 1], [1, 0, 1, 0]
    # Class 0 ranks s2 .95, s0 .9, s1 .8, s3 .5, s4 .4; unrated s1, s3 are dropped -> s2 (0), s0 (1), s4 (1):
    # AP = (1/2 + 2/3) / 2.
    ap = segment_average_precision(scores, segments, classes, ratings)
    np.testing.assert_allclose(ap, [(1 / 2 + 2 / 3) / 2, np.nan])
    # Cut after 3 predictions per class: s4 (rank 5) falls out; its positive still counts: (1/2) / 2.
    ap3 = segment_average_precision(scores, segments, classes, ratings, max_predictions=3)
    np.testing.assert_allclose(ap3, [0.25, np.nan])
    assert segment_mean_average_precision(scores, segments, classes, ratings, max_predictions=3) == 0.25


def _starter_code_segment_map(scores, segments, classes, ratings, max_predictions):
    """A transcription of the starter code's segment evaluation: per class, the submission's ranked list
    (top `max_predictions` segments by score), filtered to the segments rated for the class, scored with
    the ranks as predictions, AP over all positive ratings of the class; mean over classes with one."""
    rated = {(s, c): r for s, c, r in zip(segments, classes, ratings, strict=True)}
    positives = {}
    for (_, c), r in rated.items():
        if r > 0:
            positives[c] = positives.get(c, 0) + 1
    aps = []
    for c in sorted(positives):
        submitted = list(np.argsort(-scores[:, c], kind="stable")[:max_predictions])
        kept = [s for s in submitted if (s, c) in rated]
        hits, total = 0, 0.0
        for rank, s in enumerate(kept, start=1):
            if rated[(s, c)] > 0:
                hits += 1
                total += hits / rank
        aps.append(total / positives[c])
    return float(np.mean(aps))


@pytest.mark.parametrize("max_predictions", [10_000, 40, 7])
def test_segment_map_equals_the_starter_codes_algorithm(max_predictions):
    rng = np.random.default_rng(max_predictions)
    scores = rng.random((120, 9))
    pairs = rng.choice(120 * 9, size=300, replace=False)
    segments, classes = pairs // 9, pairs % 9
    ratings = (rng.random(300) < 0.4).astype(np.float32)
    got = segment_mean_average_precision(scores, segments, classes, ratings, max_predictions=max_predictions)
    assert got == pytest.approx(
        _starter_code_segment_map(scores, segments, classes, ratings, max_predictions), abs=1e-12
    )


def test_segment_map_rejects_ratings_that_do_not_fit_the_scores():
    scores = np.zeros((3, 2))
    with pytest.raises(ValueError, match="same length"):
        segment_average_precision(scores, [0, 1], [0], [1, 0])
    with pytest.raises(ValueError, match="index the 3 rows"):
        segment_average_precision(scores, [3], [0], [1])
    with pytest.raises(ValueError, match="index the 2 columns"):
        segment_average_precision(scores, [0], [2], [1])
