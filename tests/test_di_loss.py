import math

import pytest
import torch

from unmemorize.errors import UserError
from unmemorize.methods import get_method
from unmemorize.methods.di import di_token_losses, imagined_targets


def hand_loss(student, teacher, ids, weights, gamma, lowered=None):
    """Per-token formula written out with Python loops (``lowered[b][t]``: the tokens lowered
    at position t, default the next token alone)."""
    total, norm = 0.0, 0.0
    B, T, V = student.shape
    for b in range(B):
        for t in range(1, T):
            w = float(weights[b, t])
            if w == 0:
                continue
            down = set(lowered[b][t]) if lowered is not None else {int(ids[b, t])}
            z = [float(teacher[b, t - 1, v]) - (gamma if v in down else 0.0) for v in range(V)]
            zmax = max(z)
            p = [math.exp(x - zmax) for x in z]
            p = [x / sum(p) for x in p]
            s = [float(student[b, t - 1, v]) for v in range(V)]
            smax = max(s)
            logq = [x - smax - math.log(sum(math.exp(y - smax) for y in s)) for x in s]
            total += w * -sum(pv * lq for pv, lq in zip(p, logq))
            norm += w
    return total / norm


def make_batch(seed=0, B=3, T=6, V=7):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    ids = torch.randint(0, V, (B, T), generator=g)
    lengths = [6, 4, 2]
    weights = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        weights[b, 1:n] = 1.0
    return student, teacher, ids, weights, lengths


def test_imagined_targets_lower_only_the_memorized_token():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = imagined_targets(z, torch.tensor([0]), 3.0)
    expected = torch.softmax(torch.tensor([[-1.0, 1.0, 0.0, -1.0]]), -1)
    assert torch.allclose(p, expected)
    # The others keep their relative weights.
    assert torch.isclose(p[0, 1] / p[0, 2], torch.tensor(math.e))
    # gamma = 0 is plain self-distillation.
    assert torch.allclose(imagined_targets(z, torch.tensor([0]), 0.0), z.softmax(-1))


@pytest.mark.parametrize("gamma", [0.0, 3.0, 30.0])
def test_di_loss_matches_hand_formula_with_padding(gamma):
    student, teacher, ids, weights, _ = make_batch()
    method = get_method("di", imagination_strength=gamma)
    batch = {"input_ids": ids, "loss_weights": weights}
    got = method.loss(student, batch, teacher).item()
    assert got == pytest.approx(hand_loss(student, teacher, ids, weights, gamma), rel=1e-9)


def test_padding_content_never_changes_the_loss():
    student, teacher, ids, weights, lengths = make_batch()
    batch = {"input_ids": ids, "loss_weights": weights}
    method = get_method("di", imagination_strength=5.0)
    before = method.loss(student, batch, teacher)
    s2, t2, ids2 = student.clone(), teacher.clone(), ids.clone()
    for b, n in enumerate(lengths):
        s2[b, n - 1:] = 1e3  # logits at and after the last real token predict only padding
        t2[b, n - 1:] = -1e3
        ids2[b, n:] = 0
    after = method.loss(s2, {"input_ids": ids2, "loss_weights": weights}, t2)
    assert torch.equal(before, after)


@pytest.mark.parametrize("mode_weights", ["hard", "soft"])
def test_focus_weights_enter_as_weighted_mean(mode_weights):
    student, teacher, ids, weights, _ = make_batch(seed=1)
    focus = torch.zeros_like(weights)
    focus[0, 2] = focus[0, 4] = focus[1, 3] = 1
    if mode_weights == "hard":
        w = weights * focus
    else:
        w = weights * torch.where(focus > 0, 10.0, 1.0)
    method = get_method("di", imagination_strength=3.0)
    got = method.loss(student, {"input_ids": ids, "loss_weights": w}, teacher).item()
    assert got == pytest.approx(hand_loss(student, teacher, ids, w, 3.0), rel=1e-9)


def test_token_losses_are_zero_when_student_equals_target():
    _, teacher, ids, _, _ = make_batch(seed=2)
    targets = imagined_targets(teacher[:, :-1], ids[:, 1:], 7.0)
    student = torch.cat([targets.log(), teacher[:, -1:]], dim=1)
    losses = di_token_losses(student, teacher, ids, 7.0)
    entropy = -(targets * targets.log()).sum(-1)
    assert torch.allclose(losses, entropy)  # cross-entropy bottoms out at the target's entropy


def test_bad_method_inputs():
    with pytest.raises(UserError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(UserError, match="strength"):
        get_method("di", imagination_strength=-1.0)


def test_shared_context_tokens_by_hand():
    from unmemorize.training.forget_set import shared_context_tokens

    sequences = [[1, 2, 3, 4], [1, 2, 5, 6], [1, 7, 3, 4], [1, 2, 8, 9]]
    ones = [[0.0, 1.0, 1.0, 1.0]] * 4
    # Sequence 3 is not trained: its tokens are lowered nowhere, but it reads the others'.
    got = shared_context_tokens(sequences, ones, trainable=[0, 1, 2])
    assert got[0] == [[1], [2, 7], [3, 5], [4]]
    assert got[1] == [[1], [2, 7], [5, 3], [6]]
    assert got[2] == [[1], [7, 2], [3], [4]]
    assert got[3] == [[1], [2, 7], [8, 3, 5], [9]]
    # Out of focus: a position lowers only its own token, and lends it to no one.
    hard = [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    got = shared_context_tokens(sequences[:3], hard, trainable=[0, 1, 2])
    assert got == [[[1], [2], [3], [4]], [[1], [2], [5], [6]], [[1], [7], [3], [4]]]


def test_joint_lowering_loss_matches_hand_formula():
    """Two texts that share their first tokens: at the shared context each target lowers both
    next tokens."""
    from unmemorize.data import TokenizedExample, collate
    from unmemorize.training.forget_set import shared_context_tokens

    student, teacher, ids, _, _ = make_batch(seed=3, B=3, T=5, V=9)
    student, teacher, ids = student[:2], teacher[:2], ids[:2]
    ids[1, :2] = ids[0, :2]  # the same context up to position 2
    ids[1, 2] = (ids[0, 2] + 1) % 9
    sequences = ids.tolist()
    weights = [[0.0, 1.0, 1.0, 1.0, 1.0]] * 2
    lowered = shared_context_tokens(sequences, weights, [0, 1])
    assert lowered[0][2] == [sequences[0][2], sequences[1][2]]
    items = [TokenizedExample(None, row, []) for row in sequences]
    batch = collate(items, weights, pad_token_id=0, lowered=lowered)
    assert batch["lowered_ids"][0, 2].tolist() == lowered[0][2] and batch["lowered_ids"][0, 3].tolist() == [sequences[0][3]] * 2
    for gamma in (3.0, 30.0):
        got = get_method("di", imagination_strength=gamma).loss(student, batch, teacher).item()
        expected = hand_loss(student, teacher, ids, batch["loss_weights"], gamma, lowered)
        assert got == pytest.approx(expected, rel=1e-9)
        assert got != pytest.approx(hand_loss(student, teacher, ids, batch["loss_weights"], gamma), rel=1e-6)


def test_joint_lowering_is_deliberate_imaginations_alone():
    from unmemorize.config import UnlearnConfig

    with pytest.raises(UserError, match="--joint-lowering shapes deliberate imagination"):
        UnlearnConfig(method="ga", joint_lowering=True)
