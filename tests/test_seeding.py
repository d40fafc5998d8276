"""The two seeded noise streams (``saq_lightning/seeding.py``): each a pure function of (seed,
sample index), and distinct on purpose. The pinned values are those of the two functions the
streams replaced (``data.noise_dataset`` and ``metrics.sample_generation``, both named
``initial_noise`` / ``balanced_labels``): the figures in the README were measured with them."""

from __future__ import annotations

import torch

from saq_lightning.seeding import (
    evaluation_labels,
    evaluation_noise,
    evaluation_sample_seed,
    training_labels,
    training_noise,
    training_sample_seed,
)


def test_the_training_stream_keeps_its_numbers():
    assert training_sample_seed(3, 7) == 2219947408961387175
    torch.testing.assert_close(training_noise(3, [0, 7], (2,)),
                               torch.tensor([[-0.8185847401618958, -0.21339473128318787],
                                             [-0.6012491583824158, -0.890539824962616]]), rtol=0, atol=0)
    assert training_labels(3, range(12), 5).tolist() == [4, 0, 1, 2, 3, 2, 1, 3, 4, 0, 4, 2]


def test_the_evaluation_stream_keeps_its_numbers():
    assert evaluation_sample_seed(3, 7) == 6532028347405268038
    assert evaluation_sample_seed(3, -2) == 6532028347405268029  # chunk generators use negative indices
    torch.testing.assert_close(evaluation_noise(3, [0, 7], (2,)),
                               torch.tensor([[-0.4435136616230011, -0.047323986887931824],
                                             [1.7397335767745972, -0.49334394931793213]]), rtol=0, atol=0)
    assert evaluation_labels(range(12), [0, 1, 2, 4, 5]).tolist() == [0, 1, 2, 4, 5, 0, 1, 2, 4, 5, 0, 1]


def test_a_sample_depends_only_on_its_seed_and_index_in_both_streams():
    for noise in (training_noise, evaluation_noise):
        both = noise(5, [0, 1, 2, 3], (1, 4, 4))
        torch.testing.assert_close(noise(5, [2, 3], (1, 4, 4)), both[2:], rtol=0, atol=0)


def test_training_labels_hold_every_class_once_per_block():
    labels = training_labels(0, range(30), 10)
    for block in labels.view(3, 10):
        assert sorted(block.tolist()) == list(range(10))


def test_the_streams_differ_so_a_student_is_not_evaluated_on_its_training_noise():
    assert not torch.allclose(training_noise(0, range(4), (8,)), evaluation_noise(0, range(4), (8,)))
