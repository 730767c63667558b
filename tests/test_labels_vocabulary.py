"""Class vocabulary: hierarchy, closure, lookups, noise statistics, tail summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_tools.labels import (Vocabulary, class_frequencies, multi_hot, noise_stats,
                               tail_summary)
from datascale.errors import DataError


@pytest.fixture
def vocab():
    # food -> fruit -> apple, pear ; food -> bread
    return Vocabulary(["food", "fruit", "apple", "pear", "bread"], [None, 0, 1, 1, 0])


def test_closure_adds_ancestors(vocab):
    assert vocab.close([2]) == [0, 1, 2]
    assert vocab.close([3, 4]) == [0, 1, 3, 4]
    assert vocab.ancestors(2) == (1, 0)
    assert vocab.depth(2) == 2 and vocab.max_depth() == 3
    assert vocab.leaves() == [2, 3, 4]
    assert vocab.children(1) == [2, 3]


def test_lookup_by_name_or_id(vocab):
    assert vocab.id_of("pear") == 3 and vocab.id_of(4) == 4 and vocab.id_of("2") == 2
    with pytest.raises(DataError, match="unknown class 'kiwi'"):
        vocab.id_of("kiwi")
    with pytest.raises(DataError, match="outside the vocabulary"):
        vocab.id_of(9)


def test_save_load_round_trip(tmp_path, vocab):
    path = tmp_path / "classes.json"
    vocab.save(path)
    records = json.loads(path.read_text())
    assert records[2] == {"id": 2, "name": "apple", "parent": 1}
    again = Vocabulary.load(path)
    assert again.names == vocab.names and again.parents == vocab.parents


@pytest.mark.parametrize("records, message", [
    ([], "non-empty list"),
    ([{"id": 1, "name": "a"}], "ids 0..0"),
    ([{"id": 0, "name": "a"}, {"id": 1, "name": "a"}], "appears twice"),
    ([{"id": 0, "name": "a", "parent": 5}], "unknown parent"),
    ([{"id": 0, "name": "a", "parent": 1}, {"id": 1, "name": "b", "parent": 0}], "cycle"),
])
def test_bad_vocabularies_are_clear_errors(records, message):
    with pytest.raises(DataError, match=message):
        Vocabulary.from_records(records)


def test_bad_classes_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        Vocabulary.load(bad)


def test_noise_stats_counts_precision_and_recall():
    stats = noise_stats([([1, 2], [1, 3]), ([4], [4]), ([], [5])])
    assert stats.images == 3 and stats.noisy_labels == 3 and stats.true_labels == 4
    assert stats.correct_labels == 2
    assert stats.noise_rate == pytest.approx(1 / 3)
    assert stats.recall == pytest.approx(0.5)


def test_multi_hot_and_frequencies():
    targets = multi_hot([[0, 2], [], [1]], 3)
    assert targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    counts = class_frequencies([[0, 0, 2], [2]], 4)
    assert counts.tolist() == [1, 0, 2, 0]
    summary = tail_summary(np.array([0, 5, 50, 500]))
    assert summary["classes_present"] == 3
    assert summary["classes_lt_20"] == 1 and summary["classes_lt_100"] == 2
