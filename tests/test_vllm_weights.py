"""vitos.vllm_engine.weights (no vLLM needed): the weights the rollout engine gets equal peft's own merge."""

from __future__ import annotations

import torch

from vitos.vllm_engine.weights import merge_lora_state, policy_weights


def test_hand_merge_of_one_lora_pair():
    state = {"base_model.model.l.base_layer.weight": torch.ones(2, 3), "base_model.model.l.base_layer.bias": torch.zeros(2),
             "base_model.model.l.lora_A.default.weight": torch.tensor([[1.0, 0.0, 2.0]]),  # (r=1, in=3)
             "base_model.model.l.lora_B.default.weight": torch.tensor([[1.0], [-1.0]]),  # (out=2, r=1)
             "base_model.model.other.weight": torch.full((1,), 7.0)}
    out = merge_lora_state(state, scaling=0.5)
    assert set(out) == {"l.weight", "l.bias", "other.weight"}
    # 1 + 0.5 * B @ A: row 0 adds [0.5, 0, 1], row 1 subtracts it
    assert torch.equal(out["l.weight"], torch.tensor([[1.5, 1.0, 2.0], [0.5, 1.0, 0.0]]))
    assert out["other.weight"] is state["base_model.model.other.weight"]


def test_policy_weights_equal_peft_merge_and_unload(tiny_model_dir):
    """A tiny Qwen2.5-VL with LoRA on every linear layer and non-zero B: our merge = peft's, key for key."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain_keys = set(model.state_dict())
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_()
    state = {f"model.{k}": v for k, v in peft.state_dict().items()}  # as Policy registers it
    state["reference.x"] = torch.zeros(1)
    ours = policy_weights(state, lora_scaling=8 / 4)
    truth = peft.merge_and_unload().state_dict()
    assert set(ours) == set(truth) == plain_keys
    for k in truth:
        assert torch.allclose(ours[k], truth[k], atol=1e-6), k
    wrong = policy_weights(state, lora_scaling=1.0)  # a planted wrong scaling is visible
    assert not all(torch.allclose(wrong[k], truth[k], atol=1e-6) for k in truth)
