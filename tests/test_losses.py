"""Alignment losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from compalign.data import Split
from compalign.losses import LOSSES, as_two_class, distillation_kl
from compalign.models import build_model
from compalign.train import TrainConfig, fit

LN3 = math.log(3.0)


def test_cross_entropy_by_hand():
    # -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2)
    loss = LOSSES["ce"]()(torch.tensor([[2.0, 0.0, 0.0]]), None, torch.tensor([0]))
    assert float(loss) == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)


def test_knowledge_distillation_by_hand():
    """T=2: p(z_r/T) = [0.75, 0.25], p(z_c/T) = [0.5, 0.5].
    KL = 0.75 ln 1.5 + 0.25 ln 0.5; loss = 0.5 * ln 2 + 0.5 * 4 * KL."""
    compressed = torch.tensor([[0.0, 0.0]])
    reference = torch.tensor([[2 * LN3, 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected = 0.5 * math.log(2) + 0.5 * 4 * kl
    loss = LOSSES["kd"](temperature=2.0, alpha=0.5)(compressed, reference, torch.tensor([0]))
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.608198, abs=1e-6)


def test_binary_single_logit_equals_two_class_form():
    """One logit z means p(y=1) = sigmoid(z): same loss as the logits [0, z]."""
    compressed = torch.tensor([0.0])
    reference = torch.tensor([-2 * LN3])  # p_r(T=2) = [0.75, 0.25] as above
    loss = LOSSES["kd"](temperature=2.0, alpha=0.5)(compressed, reference, torch.tensor([0]))
    assert float(loss) == pytest.approx(0.608198, abs=1e-6)
    two = as_two_class(torch.tensor([[1.5], [-0.5]]))
    assert torch.allclose(torch.softmax(two, 1)[:, 1], torch.sigmoid(torch.tensor([1.5, -0.5])))


def test_kd_with_alpha_zero_is_cross_entropy():
    logits, reference = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    kd = LOSSES["kd"](temperature=3.0, alpha=0.0)(logits, reference, labels)
    assert torch.allclose(kd, LOSSES["ce"]()(logits, reference, labels))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_only_the_compressed_model(name):
    """fit() computes reference logits without gradients: the reference is untouched."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=generator)
    split = Split(
        images=images,
        labels=torch.arange(32) % 10,
        example_ids=[str(i) for i in range(32)],
        mean=torch.zeros(1, 1, 1, 1),
        std=torch.ones(1, 1, 1, 1) * 255,
        groups=None,
    )
    reference = build_model("small_cnn", 10, 1, 8, seed=1).eval()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    student = build_model("small_cnn", 10, 1, 8, seed=2)
    student_before = [p.clone() for p in student.parameters()]
    fit(student, split, TrainConfig(epochs=1, batch_size=16), LOSSES[name](), reference=reference)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert any(
        not torch.equal(a, b) for a, b in zip(student_before, student.parameters(), strict=True)
    )


def test_label_preserving_by_hand():
    """Example 1 is a mismatch (compressed argmax 0, reference argmax 1), example 2 is not.
    w_ce=1, w_kd=0, w_logit=0.5, w_mm=2:
      CE   = mean(log(1 + e^-2), log(1 + e^-1))
      MSE  = mean((2-0)^2, (0-1)^2, (0-0)^2, (1-2)^2) = 1.5
      mm   = CE([2, 0], label 1) over the one mismatched example = log(1 + e^2)"""
    compressed = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    reference = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1])
    cross_entropy = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    expected = cross_entropy + 0.5 * 1.5 + 2 * math.log(1 + math.exp(2))
    loss = LOSSES["label_preserving"](w_ce=1, w_kd=0, w_logit=0.5, w_mm=2)
    assert float(loss(compressed, reference, labels)) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(5.223951, abs=1e-5)


def test_label_preserving_kd_term_and_no_mismatch():
    """Without mismatches the mismatch term vanishes; the KD term is Hinton's T^2 KL."""
    compressed = torch.tensor([[0.0, 0.0]])
    reference = torch.tensor([[2 * LN3, 0.0]])  # argmax 0, as argmax([0, 0]) is: no mismatch
    labels = torch.tensor([0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = LOSSES["label_preserving"](w_ce=0, w_kd=1, w_logit=0, w_mm=5, temperature=2.0)
    assert float(loss(compressed, reference, labels)) == pytest.approx(4 * kl, abs=1e-6)


def pw_by_hand(gamma, m):
    """Two examples, reference p = [0.75, 0.25] on both. Example 1 (y=0): the reference is
    right, weight m + (1-m) 0.25^gamma, target the reference's p, compressed logits [0, 0] ->
    soft CE = ln 2. Example 2 (y=1): the reference is wrong, weight m + (1-m) 0.75^gamma, target
    one-hot(1), compressed p = [0.25, 0.75] -> CE = -ln 0.75."""
    first = (m + (1 - m) * 0.25**gamma) * math.log(2)
    second = (m + (1 - m) * 0.75**gamma) * -math.log(0.75)
    return (first + second) / 2


def test_performance_weighted_by_hand():
    compressed = torch.tensor([[0.0, 0.0], [0.0, LN3]])
    reference = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    labels = torch.tensor([0, 1])
    loss = LOSSES["pw"](gamma=5.0, m=0.75)(compressed, reference, labels)
    assert float(loss) == pytest.approx(pw_by_hand(5.0, 0.75), abs=1e-6)
    assert pw_by_hand(5.0, 0.75) == pytest.approx(0.376429, abs=1e-5)
    assert float(LOSSES["pw"](gamma=1.0, m=0.3)(compressed, reference, labels)) == pytest.approx(
        pw_by_hand(1.0, 0.3), abs=1e-6
    )


def test_performance_weights_and_targets_rules():
    """Weights grow as the reference's true-class probability falls; targets are the reference's
    distribution where it is right and one-hot where it is wrong."""
    from compalign.losses import performance_weights

    reference = torch.tensor([[LN3, 0.0], [LN3, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    weights, targets = performance_weights(reference, labels, gamma=2.0, m=0.5)
    assert torch.allclose(weights, torch.tensor([0.5 + 0.5 * 0.25**2, 0.5 + 0.5 * 0.75**2, 0.625]))
    assert torch.allclose(targets, torch.tensor([[0.75, 0.25], [0.0, 1.0], [0.5, 0.5]]))
    assert weights[1] > weights[0]


def test_performance_weighted_binary_single_logit():
    """One logit per example: p(y=1) = sigmoid(z); the same numbers as the two-class case."""
    compressed = torch.tensor([0.0, LN3])
    reference = torch.tensor([-LN3, -LN3])  # sigmoid = 0.25: p = [0.75, 0.25]
    labels = torch.tensor([0, 1])
    loss = LOSSES["pw"](gamma=5.0, m=0.75)(compressed, reference, labels)
    assert float(loss) == pytest.approx(pw_by_hand(5.0, 0.75), abs=1e-6)


def test_weights_come_from_the_frozen_reference():
    """The PW loss's gradient w.r.t. the reference logits is zero: weights and targets are
    constants of the reference, so nothing flows back into it."""
    compressed = torch.randn(6, 3, requires_grad=True)
    reference = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    LOSSES["pw"]()(compressed, reference, labels).backward()
    assert reference.grad is None or torch.count_nonzero(reference.grad) == 0
    assert torch.count_nonzero(compressed.grad) > 0


def test_logit_mse_is_the_mean_squared_logit_difference():
    compressed = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    reference = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
    loss = LOSSES["logit_mse"]()(compressed, reference, torch.tensor([0, 1]))
    assert float(loss.detach()) == pytest.approx((0 + 4 + 4 + 0) / 4)
    loss.backward()
    assert compressed.grad is not None and reference.grad is None
    assert float(LOSSES["logit_mse"]()(reference, reference, torch.tensor([0, 1]))) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_entry_describes_itself(name):
    """Options with defaults, a docstring citing its source, and a tuning grid whenever the loss
    has options (otherwise align.tune would silently skip it), each override a real option."""
    entry = LOSSES[name]
    module = __import__(entry.factory.__module__, fromlist=["ENTRY"])
    assert module.ENTRY is entry and module.__doc__
    fields = set(entry.options.model_fields)
    assert bool(fields) == bool(entry.tuning_grid)
    for override in entry.tuning_grid:
        assert set(override) <= fields
        entry(**{**entry.defaults(), **override})
    with pytest.raises(ValueError):
        entry(no_such_option=1.0)


# label_preserving as it was before SoftAdapt was added (commit 19496f7), kept verbatim: the
# fixed weighting must fine-tune to the same bits
def label_preserving_before(w_ce, w_kd, w_logit, w_mm, temperature):
    import torch.nn.functional as F

    from compalign.losses import distillation_kl

    def loss(compressed_logits, reference_logits, labels):
        compressed, reference = as_two_class(compressed_logits), as_two_class(reference_logits)
        total = w_ce * F.cross_entropy(compressed, labels)
        if w_kd:
            total = total + w_kd * distillation_kl(compressed, reference, temperature)
        if w_logit:
            total = total + w_logit * F.mse_loss(compressed_logits, reference_logits)
        reference_labels = reference.argmax(dim=1)
        mismatched = compressed.argmax(dim=1) != reference_labels
        if w_mm and bool(mismatched.any()):
            flipped = F.cross_entropy(compressed[mismatched], reference_labels[mismatched])
            total = total + w_mm * flipped
        return total

    return loss


def random_split(count: int = 48, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(
        images=torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, 10, (count,), generator=generator),
        example_ids=[str(i) for i in range(count)],
        mean=torch.zeros(1, 1, 1, 1),
        std=torch.ones(1, 1, 1, 1) * 255,
        groups=None,
    )


def fine_tuned(loss_fn, epochs: int = 2, on_epoch=None) -> dict[str, torch.Tensor]:
    """A small CNN fine-tuned against a fixed random reference with `loss_fn`: its weights."""
    reference = build_model("small_cnn", 10, 1, 8, seed=1).eval()
    student = build_model("small_cnn", 10, 1, 8, seed=2)
    config = TrainConfig(epochs=epochs, batch_size=16, lr=0.05)
    fit(student, random_split(), config, loss_fn, reference=reference, on_epoch=on_epoch)
    return student.state_dict()


def assert_same_bits(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize(
    "weights",
    [
        {"w_ce": 1.0, "w_kd": 1.0, "w_logit": 0.1, "w_mm": 1.0, "temperature": 4.0},
        {"w_ce": 0.5, "w_kd": 0.0, "w_logit": 0.5, "w_mm": 2.0, "temperature": 2.0},
    ],
)
def test_label_preserving_fixed_fine_tunes_to_the_same_bits_as_before(weights):
    """The same params give the same numbers: fixed weighting (the default) against the loss as
    it was, and SoftAdapt with beta 0 (its weights stay exactly 1) against both."""
    torch.manual_seed(0)
    before = fine_tuned(label_preserving_before(**weights))
    torch.manual_seed(0)
    assert_same_bits(before, fine_tuned(LOSSES["label_preserving"](**weights)))
    neutral = {"weighting": "softadapt", "softadapt_variant": "plain", "softadapt_beta": 0.0}
    torch.manual_seed(0)
    assert_same_bits(before, fine_tuned(LOSSES["label_preserving"](**weights, **neutral)))


def test_softadapt_gives_more_weight_to_the_part_that_decreases_slowest():
    """SoftAdapt (arXiv 1912.12355, section 3) with beta > 0 attends to the lagging part. The
    authors' README example: part 1 increases, parts 2 and 3 fall (3 ten times faster): the
    weights are ordered 1 > 2 > 3 in every variant; beta 0 weights the plain and normalised
    variants equally; the loss-weighted one also scales by the parts' mean values."""
    from compalign.losses.softadapt import interval_slopes, softadapt_weights

    history = [[1.0, 150.0, 1500.0], [2.0, 100.0, 1000.0], [3.0, 50.0, 500.0]]
    slopes, magnitudes = interval_slopes(history, every=2)
    assert slopes == [1.0, -50.0, -500.0] and magnitudes == [2.5, 75.0, 750.0]
    for variant in ("plain", "normalised", "loss_weighted"):
        weights = softadapt_weights(slopes, magnitudes, variant, beta=0.1)
        assert sum(weights) == pytest.approx(1.0)
        assert weights[0] > weights[1] > weights[2], variant
    plain = [math.exp(0.1 * s) for s in slopes]
    assert softadapt_weights(slopes, magnitudes, "plain", 0.1) == pytest.approx(
        [p / sum(plain) for p in plain]
    )
    normalised = [math.exp(0.1 * s / 551.0) for s in slopes]
    assert softadapt_weights(slopes, magnitudes, "normalised", 0.1) == pytest.approx(
        [p / sum(normalised) for p in normalised]
    )
    weighted = [f * p for f, p in zip(magnitudes, plain, strict=True)]
    assert softadapt_weights(slopes, magnitudes, "loss_weighted", 0.1) == pytest.approx(
        [p / sum(weighted) for p in weighted]
    )
    assert softadapt_weights(slopes, magnitudes, "plain", 0.0) == [1 / 3] * 3
    # beta < 0 turns it round: the fastest-falling part gets the most weight
    turned = softadapt_weights(slopes, magnitudes, "plain", -0.1)
    assert turned[2] > turned[1] > turned[0]
    # the interval: slope over the last `every` epochs, mean over them
    assert interval_slopes([[4.0], [3.0], [1.0]], every=1) == ([-2.0], [1.0])


def test_softadapt_raises_the_weight_of_the_term_that_stops_decreasing():
    """Inside the loss: between two epochs cross-entropy falls (the compressed model becomes
    sure of the label) while distillation rises (it moves away from the reference's uniform
    distribution). After the epoch SoftAdapt weights distillation above cross-entropy; the
    weights keep their sum (K = 2 active terms), and each epoch records the weights it trained
    with and its terms' means."""
    loss = LOSSES["label_preserving"](
        w_logit=0.0,
        w_mm=0.0,
        weighting="softadapt",
        softadapt_variant="plain",
        softadapt_beta=5.0,
    )
    labels, reference = torch.tensor([0]), torch.tensor([[0.0, 0.0]])
    epoch_logits = [torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])]
    records = []
    for epoch, logits in enumerate(epoch_logits):
        loss(logits, reference, labels)
        records.append(loss.on_epoch_end(epoch))
    assert records[0]["softadapt.w_ce"] == records[0]["softadapt.w_kd"] == 1.0
    ce = [r["softadapt.ce"] for r in records]
    kd = [r["softadapt.kd"] for r in records]
    assert ce[1] < ce[0] and kd[1] > kd[0] == 0.0
    weights = loss.weights()
    assert weights["kd"] > weights["ce"]
    assert weights["kd"] + weights["ce"] == pytest.approx(2.0)
    expected = [math.exp(5.0 * (ce[1] - ce[0])), math.exp(5.0 * (kd[1] - kd[0]))]
    assert weights["ce"] == pytest.approx(2 * expected[0] / sum(expected))
    # the next epoch trains with them: the total is the reweighted sum of the terms
    total = loss(epoch_logits[1], reference, labels)
    assert float(total) == pytest.approx(weights["ce"] * ce[1] + weights["kd"] * kd[1])
    assert loss.trajectory()["softadapt.w_kd"] == [1.0, 1.0]


def test_softadapt_updates_every_n_epochs_and_reports_through_fit():
    """softadapt_every=2: the weights change only after epochs 2, 4, ...; fit hands each
    epoch's record to on_epoch (the stage's log lines) beside the loss."""
    seen = []
    loss = LOSSES["label_preserving"](
        w_logit=0.1, weighting="softadapt", softadapt_every=2, softadapt_beta=50
    )
    fine_tuned(loss, epochs=4, on_epoch=lambda epoch, metrics: seen.append(metrics))
    assert len(seen) == 4
    assert all(set(m) >= {"loss", "train_accuracy", "softadapt.w_ce", "softadapt.mm"} for m in seen)
    trajectory = loss.trajectory()
    w_kd = trajectory["softadapt.w_kd"]
    assert w_kd[0] == w_kd[1] == 1.0 and w_kd[2] != 1.0 and w_kd[3] == w_kd[2]
    assert trajectory["softadapt.w_logit"][0] == 0.1  # configured weight x 1
    assert [m["softadapt.w_kd"] for m in seen] == w_kd


def test_focal_distillation_weights_are_alpha_plus_beta_exactly_where_the_reference_is_right():
    from compalign.losses.focal_distillation import focal_weights

    reference = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])  # the reference is right on examples 0 and 2
    weights = focal_weights(reference, labels, alpha=1.0, beta=5.0)
    assert weights.tolist() == [6.0, 1.0, 6.0, 1.0]
    assert focal_weights(reference, labels, alpha=0.0, beta=2.0).tolist() == [2.0, 0.0, 2.0, 0.0]
    # binary, one logit: the reference predicts 1 where its logit is above 0
    binary = focal_weights(torch.tensor([1.5, -0.5]), torch.tensor([1, 1]), 0.5, 1.0)
    assert binary.tolist() == [1.5, 0.5]


def test_focal_distillation_by_hand():
    """Two examples, T=2, reference p(z_r/T) = [0.75, 0.25] on both, compressed [0, 0]:
    D_i = 4 * KL = 4 (0.75 ln 1.5 + 0.25 ln 0.5); example 1 (y=0) the reference is right
    (weight alpha + beta), example 2 (y=1) wrong (weight alpha). CE: ln 2 on both."""
    compressed = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    reference = torch.tensor([[2 * LN3, 0.0], [2 * LN3, 0.0]])
    labels = torch.tensor([0, 1])
    distance = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    expected = math.log(2) + 0.5 * ((1 + 3) * distance + 1 * distance) / 2
    loss = LOSSES["focal_distillation"](
        alpha=1.0, beta=3.0, temperature=2.0, distillation_weight=0.5
    )
    assert float(loss(compressed, reference, labels)) == pytest.approx(expected, abs=1e-6)
    # logit matching: mean over classes of the squared logit difference
    lm = LOSSES["focal_distillation"](alpha=1.0, beta=3.0, distance="logit_l2")
    square = (2 * LN3) ** 2 / 2
    assert float(lm(compressed, reference, labels)) == pytest.approx(
        math.log(2) + (4 * square + square) / 2, abs=1e-6
    )


def test_focal_distillation_without_focus_is_cross_entropy_plus_distillation():
    logits, reference = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    plain = LOSSES["focal_distillation"](alpha=1.0, beta=0.0, temperature=3.0)
    expected = LOSSES["ce"]()(logits, reference, labels) + distillation_kl(logits, reference, 3.0)
    assert torch.allclose(plain(logits, reference, labels), expected)
