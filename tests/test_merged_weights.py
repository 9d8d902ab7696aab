"""vitos.rl.policy.merged_weights: what `export_model` writes and the rollout engine loads equals peft's merge."""

from __future__ import annotations

import torch

from vitos.rl.policy import merged_weights


def test_merged_weights_equal_peft_merge_and_unload(tiny_model_dir):
    """A tiny Qwen2.5-VL with LoRA on three projections and non-zero B: ours = peft's, key for key; the
    reference sub-tree is dropped; a planted wrong scale is visible."""
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
    state = {f"model.{k}": v for k, v in peft.state_dict().items()}  # as vitos.rl.policy.Policy registers it
    state["reference.x"] = torch.zeros(1)
    ours = merged_weights(state, lora_scale=8 / 4)
    truth = peft.merge_and_unload().state_dict()
    assert set(ours) == set(truth) == plain_keys
    for k in truth:
        assert torch.allclose(ours[k], truth[k], atol=1e-6), k
    wrong = merged_weights(state, lora_scale=1.0)
    assert not all(torch.allclose(wrong[k], truth[k], atol=1e-6) for k in truth)
    plain = {f"model.{k}": v for k, v in truth.items()}
    assert merged_weights(plain, None).keys() == truth.keys()  # full fine-tuning: the names as they are
