"""The chunked loss equals plain cross-entropy over full logits, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from src.kernels.loss import lm_cross_entropy


def plain(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).flatten(0, 1).float(), targets.flatten())


def leaves(B=2, T=12, C=16, V=50):
    hidden = torch.randn(B, T, C, requires_grad=True)
    weight = (torch.randn(V, C) * 0.5).requires_grad_()
    return hidden, weight, torch.randint(0, V, (B, T))


def loss_and_grads(fn, hidden, weight, targets, **kwargs):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, **kwargs)
    (3.0 * loss).backward()  # a non-unit incoming gradient must scale the stored ones
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize(
    "matmuls",
    [{}, {"onednn": True}, {"onednn": True, "onednn_weight_grad": False}],
    ids=["pytorch", "onednn", "onednn-torch-wgrad"],
)
@pytest.mark.parametrize("chunk_size", [1, 5, 24, 1000])
def test_equals_plain_cross_entropy_in_fp32(chunk_size, matmuls):
    hidden, weight, targets = leaves()
    expected = loss_and_grads(plain, hidden, weight, targets)
    got = loss_and_grads(lm_cross_entropy, hidden, weight, targets, chunk_size=chunk_size, **matmuls)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_equals_plain_cross_entropy_under_bf16_autocast():
    hidden, weight, targets = leaves(C=64, V=300)
    with torch.autocast("cpu", torch.bfloat16):
        expected = loss_and_grads(plain, hidden, weight, targets)
        got = loss_and_grads(lm_cross_entropy, hidden, weight, targets, chunk_size=7, onednn=True)
    assert got[1].dtype == got[2].dtype == torch.float32
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)


def test_a_target_probability_below_fp32_range_still_gives_its_exact_log():
    # Logits = hidden (identity head); the first token's target sits 200 below the others,
    # so its probability (e^-200) is 0 in fp32: its log must still be exact.
    V = 40
    hidden = torch.randn(1, 3, V)
    targets = torch.tensor([[5, 7, 9]])
    hidden[0, 0, 5] = -200.0
    hidden.requires_grad_()
    weight = torch.eye(V).requires_grad_()
    expected = loss_and_grads(plain, hidden, weight, targets)
    got = loss_and_grads(lm_cross_entropy, hidden, weight, targets, chunk_size=2)
    assert torch.isfinite(got[0]) and got[0] > 60
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ignored_targets_count_neither_in_the_mean_nor_the_gradient():
    hidden, weight, targets = leaves()
    targets[0, :5] = -100
    expected = loss_and_grads(plain, hidden, weight, targets)
    got = loss_and_grads(lm_cross_entropy, hidden, weight, targets, chunk_size=4)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(got[1][0, :5]) == 0


def test_without_grad_gives_the_same_value():
    hidden, weight, targets = leaves()
    with torch.no_grad():
        torch.testing.assert_close(
            lm_cross_entropy(hidden, weight, targets, chunk_size=5), plain(hidden, weight, targets)
        )


def test_no_tokens_give_a_zero_loss_and_zero_gradients():
    hidden, weight, targets = leaves(T=0)
    loss, grad_hidden, grad_weight = loss_and_grads(lm_cross_entropy, hidden, weight, targets)
    assert loss.item() == 0 and grad_hidden.shape == hidden.shape
    assert torch.count_nonzero(grad_weight) == 0  # the weight gradient is never left unwritten


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients():
    hidden, weight, targets = leaves()
    loss = lm_cross_entropy(hidden, weight, targets, chunk_size=5)
    loss.backward(retain_graph=True)
    first = hidden.grad.clone(), weight.grad.clone()
    loss.backward(retain_graph=True)  # the stored gradients were not scaled in place by the first pass
    torch.testing.assert_close((hidden.grad, weight.grad), (2 * first[0], 2 * first[1]))
    # A third: backward's gradients are new tensors, never the stored ones, which autograd would
    # then take as .grad and add the next pass's gradients into (2x would still read right).
    loss.backward()
    torch.testing.assert_close((hidden.grad, weight.grad), (3 * first[0], 3 * first[1]))
