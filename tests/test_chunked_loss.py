"""The chunked loss path (training.loss) against the plain path on full logits, in float64 on the
tiny models: the same loss value and the same gradient of every parameter, for every training
method and retain term, with padding, a hard and a soft focus, chunks smaller than a sequence, a
trainable (tied) output layer and logit soft-capping."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from unmemorize.methods import get_method
from unmemorize.training import loss as chunked
from unmemorize.training.loss import chunked_loss, final_hidden, head_matches, objective, output_head

METHODS = [("di", {"imagination_strength": 3.0}), ("di", {"imagination_strength": 0.0}), ("ga", {}),
           ("finetune", {}), ("task-vector", {}), ("npo", {"beta": 0.5}), ("simnpo", {"beta": 2.5, "margin": 0.3})]


def model_pair(model_dir, softcap: float | None = None):
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    if softcap is not None:
        student.config.final_logit_softcapping = softcap
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    if softcap is not None:
        teacher.config.final_logit_softcapping = softcap
    g = torch.Generator().manual_seed(0)  # the same student whichever test ran before
    with torch.no_grad():  # the student has moved away from the teacher
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return student, teacher


def make_batch(vocab: int, weights: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 6, 3]
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    w = torch.zeros(3, 9, dtype=torch.float32)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        w[row, 1:n] = 1.0
    if weights == "hard":  # a hard focus: only some tokens are targets
        w *= (torch.rand(3, 9, generator=g) > 0.5).float()
        w[0, 2] = 1.0
    elif weights == "soft":
        w *= 1 + 9 * (torch.rand(3, 9, generator=g) > 0.5).float()
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "loss_weights": w}


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def plain(method, retain, student, teacher, batch, scale):
    student.zero_grad(set_to_none=True)
    needs_teacher = method.retain_needs_teacher if retain else method.needs_teacher
    with torch.no_grad():
        teacher_logits = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits if needs_teacher else None
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = (method.retain_loss_sum if retain else method.loss_sum)(logits, batch, teacher_logits) * scale
    loss.backward()
    return loss.item(), gradients(student)


def by_chunks(method, retain, student, teacher, batch, scale):
    student.zero_grad(set_to_none=True)
    needs_teacher = method.retain_needs_teacher if retain else method.needs_teacher
    teacher_pair = None
    if needs_teacher:
        with torch.no_grad():
            teacher_pair = (output_head(teacher), final_hidden(teacher, batch)[0])
    hidden, _ = final_hidden(student, batch)
    loss = chunked_loss(objective(method, retain), output_head(student), hidden, batch, scale, teacher_pair)
    loss.backward()
    return loss.item(), gradients(student)


def assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-10, abs=1e-12)
    assert set(a[1]) == set(b[1])
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}{'-' + str(p) if p else ''}" for n, p in METHODS])
@pytest.mark.parametrize("weights", ["uniform", "hard", "soft"])
def test_chunked_forget_loss_equals_the_plain_path(tiny_model_dir, name, params, weights, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * 400)  # 3 positions a chunk: many chunks
    method = get_method(name, **params)
    student, teacher = model_pair(tiny_model_dir)
    batch = make_batch(student.config.vocab_size, weights)
    scale = torch.tensor(0.37, dtype=torch.float64)
    assert_same(by_chunks(method, False, student, teacher, batch, scale),
                plain(method, False, student, teacher, batch, scale))


def test_chunked_joint_lowering_equals_the_plain_path(tiny_model_dir, monkeypatch):
    """--joint-lowering: several lowered tokens per position, the same in both paths."""
    from unmemorize.training.forget_set import shared_context_tokens

    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * 400)
    method = get_method("di", imagination_strength=3.0)
    student, teacher = model_pair(tiny_model_dir)
    batch = make_batch(student.config.vocab_size, "hard")
    batch["input_ids"][1, :4] = batch["input_ids"][0, :4]  # rows 0 and 1 share a context
    weights = batch["loss_weights"].tolist()
    lowered = shared_context_tokens(batch["input_ids"].tolist(), weights, [0, 1, 2])
    width = max(len(s) for row in lowered for s in row)
    assert width > 1
    batch["lowered_ids"] = torch.tensor([[s + [s[0]] * (width - len(s)) for s in row] for row in lowered])
    scale = torch.tensor(0.37, dtype=torch.float64)
    joint = by_chunks(method, False, student, teacher, batch, scale)
    assert_same(joint, plain(method, False, student, teacher, batch, scale))
    single = plain(method, False, student, teacher, {k: v for k, v in batch.items() if k != "lowered_ids"}, scale)
    assert joint[0] != pytest.approx(single[0], rel=1e-6)


@pytest.mark.parametrize("name", ["gd", "kl"])
def test_chunked_retain_terms_equal_the_plain_path(tiny_model_dir, name, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 5 * 400)
    method = get_method(name)
    student, teacher = model_pair(tiny_model_dir)
    batch = make_batch(student.config.vocab_size, "uniform", seed=3)
    assert_same(by_chunks(method, True, student, teacher, batch, 1.5), plain(method, True, student, teacher, batch, 1.5))


def test_frozen_head_gets_no_gradient_and_capped_logits_are_exact(tiny_models, monkeypatch):
    """LoRA: the output layer is frozen (only hidden states carry gradient). Soft-capping
    (Gemma 2's final_logit_softcapping) enters the chunked path's logits as the model's."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 4 * 400)
    student, teacher = model_pair(tiny_models["gemma3"], softcap=3.0)
    student.get_output_embeddings().weight.requires_grad_(False)
    head = output_head(student)
    assert head.softcap == 3.0
    assert head_matches(student, head, torch.tensor([[1, 5, 9, 12]]))
    method = get_method("di", imagination_strength=10.0)
    batch = make_batch(student.config.vocab_size, "hard", seed=5)
    ours = by_chunks(method, False, student, teacher, batch, 1.0)
    assert "model.embed_tokens.weight" not in ours[1]
    assert_same(ours, plain(method, False, student, teacher, batch, 1.0))


def test_float32_chunked_gradient_is_as_close_to_float64_as_the_plain_one(tiny_models):
    """In float32 the chunked path's gradient is no further from the float64 value than the
    plain path's."""
    method = get_method("di", imagination_strength=3.0)
    student64, teacher64 = model_pair(tiny_models["llama"])
    batch = make_batch(student64.config.vocab_size, "uniform", seed=7)
    exact = plain(method, False, student64, teacher64, batch, 1.0)[1]
    student32, teacher32 = student64.float(), teacher64.float()
    errors = {}
    for label, run in (("plain", plain), ("chunked", by_chunks)):
        grads = run(method, False, student32, teacher32, batch, 1.0)[1]
        errors[label] = max(((grads[k].double() - exact[k]).norm() / exact[k].norm()).item() for k in exact)
    assert errors["chunked"] <= 2 * errors["plain"] + 1e-7, errors


def test_bfloat16_autocast_keeps_the_loss_in_float32(tiny_models):
    """--precision bf16: the forward passes in bfloat16 (autocast), the chunked loss in float32;
    its value and gradient stay within bfloat16 rounding of the float32 ones."""
    method = get_method("di", imagination_strength=3.0)
    student, teacher = model_pair(tiny_models["llama"])
    student, teacher = student.float(), teacher.float()
    batch = make_batch(student.config.vocab_size, "uniform", seed=11)
    exact = by_chunks(method, False, student, teacher, batch, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = by_chunks(method, False, student, teacher, batch, 1.0)
        half_plain = plain(method, False, student, teacher, batch, 1.0)
    assert half[0] == pytest.approx(exact[0], rel=2e-2)
    for name in exact[1]:
        assert half[1][name].dtype == torch.float32
        # bfloat16 forward passes move the gradient; the chunked loss adds no error of its own
        # beyond what the plain path under the same autocast shows.
        error = ((half[1][name] - exact[1][name]).norm() / exact[1][name].norm()).item()
        plain_error = ((half_plain[1][name] - exact[1][name]).norm() / exact[1][name].norm()).item()
        assert error <= 1.5 * plain_error + 1e-3, name


def test_a_batch_without_targets_gives_zero_loss_and_gradient(tiny_models):
    method = get_method("finetune")
    student, teacher = model_pair(tiny_models["gemma3"])
    batch = make_batch(student.config.vocab_size, "uniform")
    batch["loss_weights"].zero_()
    loss, grads = by_chunks(method, False, student, teacher, batch, 1.0)
    assert loss == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_softmax_over_a_vocabulary_subset_is_the_nll_within_it(tiny_models, monkeypatch):
    """finetune --softmax-vocabulary: the NLL of a softmax over the given rows only, written out
    on the full logits' columns, and its gradient (the output layer's only on those rows)."""
    import dataclasses

    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 4 * 400)
    student, _ = model_pair(tiny_models["gemma3"])
    batch = make_batch(student.config.vocab_size, "soft", seed=2)
    rows = torch.unique(torch.cat([batch["input_ids"].flatten(), torch.arange(40)]))
    head = dataclasses.replace(output_head(student), rows=rows)
    hidden, _ = final_hidden(student, batch)
    ours = chunked_loss(objective(get_method("finetune")), head, hidden, batch, 0.5)
    ours.backward()
    got = gradients(student)
    student.zero_grad(set_to_none=True)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, rows]
    position = {int(r): i for i, r in enumerate(rows)}
    targets = torch.tensor([[position[int(t)] for t in row] for row in batch["input_ids"][:, 1:]])
    nll = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = (nll * batch["loss_weights"][:, 1:]).sum() * 0.5
    expected.backward()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-10)
    for name, grad in gradients(student).items():
        torch.testing.assert_close(got[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    outside = torch.ones(student.config.vocab_size, dtype=torch.bool)
    outside[rows] = False
    # The tied output/input matrix moves on the softmax's rows only (the input tokens are among them).
    assert torch.count_nonzero(got["model.embed_tokens.weight"][outside]) == 0
    assert torch.count_nonzero(got["model.embed_tokens.weight"][rows]) > 0
