"""The NumPy head fit against PyTorch's nn.Linear + cross_entropy + AdamW (the oracle), batch by batch."""

import numpy as np
import torch
import torch.nn.functional as F

from camcli.headfit import AdamW, LinearHead, cross_entropy, evaluate, shuffled_batches, train_one_epoch


def test_numpy_adamw_fit_equals_pytorchs_on_the_same_batches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 16)).astype(np.float32)
    y = rng.integers(0, 4, 70)
    head = LinearHead.init(16, 4, seed=3)
    theirs = torch.nn.Linear(16, 4)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(head.weight))
        theirs.bias.copy_(torch.from_numpy(head.bias))
    ours_opt = AdamW(lr=0.01, weight_decay=1e-4)
    their_opt = torch.optim.AdamW(theirs.parameters(), lr=0.01, weight_decay=1e-4)
    for epoch in range(5):
        batches = list(shuffled_batches(x, y, 32, np.random.default_rng(epoch)))
        loss, acc = train_one_epoch(head, batches, ours_opt)
        total = 0.0
        for bx, by in batches:
            out = theirs(torch.from_numpy(bx))
            step_loss = F.cross_entropy(out, torch.from_numpy(by))
            their_opt.zero_grad()
            step_loss.backward()
            their_opt.step()
            total += float(step_loss) * len(by)
        assert abs(loss - total / 70) < 1e-5
        np.testing.assert_allclose(head.weight, theirs.weight.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(head.bias, theirs.bias.detach().numpy(), atol=1e-5)
    val_loss, val_acc, preds = evaluate(head, x, y)
    with torch.no_grad():
        out = theirs(torch.from_numpy(x))
    assert abs(val_loss - float(F.cross_entropy(out, torch.from_numpy(y)))) < 1e-5
    assert preds.tolist() == out.argmax(1).tolist() and val_acc == float((out.argmax(1).numpy() == y).mean())


def test_cross_entropy_gradient_by_finite_differences():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 5))
    labels = np.array([0, 4, 2])
    _, grad = cross_entropy(logits, labels)
    numeric = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[i] = 1e-6
        numeric[i] = (cross_entropy(logits + step, labels)[0] - cross_entropy(logits - step, labels)[0]) / 2e-6
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_the_init_is_seeded_and_bounded_as_nn_linears():
    a, b = LinearHead.init(100, 3, seed=5), LinearHead.init(100, 3, seed=5)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert np.abs(a.weight).max() <= 0.1 and np.abs(a.weight).max() > 0.09 and a.weight.dtype == np.float32
