"""``diff_values`` / ``format_mismatches``: the one field-by-field comparison behind every refusal
of input made under other settings (shards, checkpoints, resumes, output folders)."""

from __future__ import annotations

import numpy as np

from saq_lightning.mismatches import MISSING, diff_values, format_mismatches


def test_nested_differences_are_named_by_their_path():
    expected = {"phases": [{"steps": 10}, {"steps": 5}], "seed": 0}
    found = {"phases": [{"steps": 10}, {"steps": 20}], "seed": 0}
    assert diff_values(expected, found, "", subset=False) == [("phases[1].steps", 5, 20)]


def test_a_key_one_side_lacks_is_missing_unless_only_the_expected_keys_count():
    assert diff_values({"a": 1}, {"a": 1, "b": 2}, "meta", subset=False) == [("meta.b", MISSING, 2)]
    assert diff_values({"a": 1}, {"a": 1, "b": 2}, "meta", subset=True) == []


def test_values_compare_as_json_tuples_as_lists_and_numpy_scalars_as_numbers():
    assert diff_values({"shape": (1, 8, 8), "w": np.float32(0.5)}, {"shape": [1, 8, 8], "w": 0.5}, "",
                       subset=False) == []


def test_floats_agree_within_a_relative_1e_9_and_booleans_only_with_booleans():
    assert diff_values(1.0, 1.0 + 1e-12, "x", subset=False) == []
    assert diff_values(1.0, 1.0 + 1e-6, "x", subset=False) == [("x", 1.0, 1.0 + 1e-6)]
    assert diff_values(True, 1, "flag", subset=False) == [("flag", True, 1)]


def test_the_message_has_one_line_per_field():
    text = format_mismatches("run.ckpt differs", [("steps", 10, 20), ("seed", 0, 1)])
    assert text == "run.ckpt differs:\n  steps: expected 10, found 20\n  seed: expected 0, found 1"
