"""Build a transformers `LlamaForCausalLM` with the same config and weights as our model."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from src.models import SmolLM2
from src.models.hf import to_hf_config, to_hf_state_dict


def llama_twin(model: SmolLM2) -> LlamaForCausalLM:
    hf_config = {
        k: v for k, v in to_hf_config(model.config).items() if k not in ("architectures", "torch_dtype")
    }
    llama = LlamaForCausalLM(LlamaConfig(**hf_config)).eval()
    result = llama.load_state_dict(to_hf_state_dict(model.state_dict(), model.config), strict=False)
    # transformers ties lm_head to the embedding itself; nothing else may be left out.
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
    return llama
