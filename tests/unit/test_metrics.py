"""Evaluation figures on hand-made predictions, where the right answer is known by hand."""

import itertools

import pytest
from fnbundle.training.metrics import (
    LENGTH_BUCKETS,
    classification_metrics,
    length_bucket,
    metrics_by_length,
)

pytestmark = pytest.mark.unit

NEG, POS = 0, 1
LABELS = ["negative", "positive"]


@pytest.mark.parametrize(
    ("text", "bucket"),
    [
        ("meh", "1-5"),
        ("10/10", "1-5"),
        ("Not  bad   at all!", "1-5"),  # runs of spaces are one gap
        ("one two three four five", "1-5"),
        ("one two three four five six", "6-20"),
        (" ".join(["word"] * 20), "6-20"),
        (" ".join(["word"] * 21), "21+"),
        ("line one\nline two\tand a tab", "6-20"),
    ],
)
def test_length_bucket_counts_whitespace_separated_words(text, bucket):
    assert length_bucket(text) == bucket


def test_buckets_cover_every_length_without_gaps():
    assert [name for name, _, _ in LENGTH_BUCKETS] == ["1-5", "6-20", "21+"]
    for (_, _, most), (_, fewest, _) in itertools.pairwise(LENGTH_BUCKETS):
        assert fewest == most + 1
    assert LENGTH_BUCKETS[-1][2] is None


def test_a_model_wrong_on_short_texts_shows_it_in_the_short_bucket():
    # The gap a user meets first: every long review right, short positives called negative.
    long_review = " ".join(["word"] * 25)
    texts = ["Loved it", "so good", "awful", "never again"] + [long_review] * 4
    y_true = [POS, POS, NEG, NEG, POS, NEG, POS, NEG]
    y_pred = [NEG, NEG, NEG, NEG, POS, NEG, POS, NEG]

    m = classification_metrics(y_true, y_pred, LABELS, texts)

    assert m["accuracy"] == 0.75  # the overall figure looks fine...
    short = m["by_length"]["1-5"]
    assert short == {"examples": 4, "accuracy": 0.5, "macro_f1": pytest.approx(0.3333, abs=1e-4)}
    # ...short: negative P=2/4 R=1 F1=2/3, positive F1=0: macro (2/3 + 0) / 2
    assert m["by_length"]["21+"] == {"examples": 4, "accuracy": 1.0, "macro_f1": 1.0}
    assert m["by_length"]["6-20"] is None  # no rows: null, the key is still there
    assert list(m["by_length"]) == ["1-5", "6-20", "21+"]


def test_bucket_macro_f1_averages_only_labels_the_bucket_holds():
    texts = ["great", "superb", "a fine film with a great cast", "dull, slow and far too long"]
    y_true = [POS, POS, POS, NEG]
    y_pred = [POS, POS, POS, POS]

    by_length = metrics_by_length(texts, y_true, y_pred, 2)

    # Only positives, all right: 1.0, not 0.5 for a negative class the bucket never held.
    assert by_length["1-5"] == {"examples": 2, "accuracy": 1.0, "macro_f1": 1.0}
    # A wrong prediction brings the other label in: positive P=1/2 R=1 F1=2/3, negative 0.
    assert by_length["6-20"] == {"examples": 2, "accuracy": 0.5, "macro_f1": 0.3333}


def test_bucket_figures_add_up_to_the_overall_ones():
    texts = ["ok"] * 3 + ["a b c d e f g"] * 5 + [" ".join(["w"] * 30)] * 2
    y_true = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    y_pred = [0, 1, 1, 0, 2, 2, 0, 1, 2, 1]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"], texts)
    buckets = [b for b in m["by_length"].values() if b]
    assert sum(b["examples"] for b in buckets) == m["eval_examples"] == 10
    correct = sum(round(b["accuracy"] * b["examples"]) for b in buckets)
    assert correct / m["eval_examples"] == m["accuracy"] == 0.7


def test_without_texts_there_is_no_length_breakdown():
    m = classification_metrics([NEG, POS], [NEG, POS], LABELS)
    assert "by_length" not in m
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per row"):
        metrics_by_length(["a", "b"], [0], [0], 2)
