"""hpa_kit.labels: the class tables."""

from __future__ import annotations

from hpa_kit.labels import CLASS_NAMES, NUM_CLASSES, SHORT_NAMES


def test_short_names_one_per_class_distinct_short_and_printable():
    assert len(SHORT_NAMES) == len(CLASS_NAMES) == NUM_CLASSES
    assert len(set(SHORT_NAMES)) == NUM_CLASSES
    assert len({name.lower() for name in SHORT_NAMES}) == NUM_CLASSES
    for short in SHORT_NAMES:
        # OpenCV's Hershey fonts draw printable ASCII only; a space would split a label
        assert 2 <= len(short) <= 10 and short.isascii() and short.isprintable(), short
        assert " " not in short, short


def test_short_names_abbreviate_their_class():
    for short, name in zip(SHORT_NAMES, CLASS_NAMES, strict=True):
        if short == "ER":  # Endoplasmic reticulum: the usual initials
            continue
        # the first letters of a short name are the first letters of one word of the name
        words = name.lower().replace("-", " ").split()
        assert any(word.startswith(short.lower()[:2]) for word in words), (short, name)
