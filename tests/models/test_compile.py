"""`model.compile()` changes neither the numbers nor the checkpoint keys.

Inductor builds the tiny model's forward and backward in under 10 s on 2 CPU cores (cold
cache), so this runs in the default suite.
"""

import torch

from src.models import SmolLM2, SmolLM2Config
from src.models.loss import lm_cross_entropy


def loss_and_grads(model: SmolLM2, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = lm_cross_entropy(model.hidden_states(x[:, :-1]), model.lm_head.weight, x[:, 1:])
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def test_compiled_model_gives_the_same_loss_gradients_and_keys():
    eager = SmolLM2(SmolLM2Config.from_preset("tiny"))
    compiled = SmolLM2(eager.config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()  # in place, unlike torch.compile(model), so no "_orig_mod." key prefix
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randint(0, eager.config.vocab_size, (2, 33))
    expected_loss, expected_grads = loss_and_grads(eager, x)
    torch._dynamo.reset()
    loss, grads = loss_and_grads(compiled, x)  # through `hidden_states`, the training path
    # Dynamo really compiled something: one graph shared by every block.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
