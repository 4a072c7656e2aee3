"""The CPU decode attention (pipelines.llm.attention): a speed change that must not change what the model
computes. The grouped product is compared with transformers' own SDPA attention on random inputs (with left
padding masked); the engine's end-to-end identity with ``generate()`` under it is in test_engine.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from pipelines.llm.attention import grouped_decode_attention, use_grouped_decode


class _Module(torch.nn.Module):  # what the attention functions read off the attention layer
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _inputs(batch=3, heads=6, kv_heads=2, q=1, length=11, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, q, dim, generator=g)
    key = torch.randn(batch, kv_heads, length, dim, generator=g)
    value = torch.randn(batch, kv_heads, length, dim, generator=g)
    mask = torch.ones(batch, 1, q, length, dtype=torch.bool)
    mask[1, :, :, :4] = False  # left padding of row 1
    mask[2, :, :, :7] = False
    return query, key, value, mask


@pytest.mark.parametrize("masked", [True, False])
def test_grouped_decode_equals_sdpa_on_one_query_position(masked):
    query, key, value, mask = _inputs()
    module = _Module(groups=3).eval()
    ours, _ = grouped_decode_attention(module, query, key, value, mask if masked else None, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask if masked else None, scaling=0.3)
    assert ours.shape == ref.shape == (3, 1, 6, 8)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_grouped_decode_masks_padding_to_exactly_zero_weight():
    """Changing the keys/values a row may not attend to leaves its output bit-identical."""
    query, key, value, mask = _inputs()
    module = _Module(groups=3).eval()
    out, _ = grouped_decode_attention(module, query, key, value, mask, scaling=0.3)
    key2, value2 = key.clone(), value.clone()
    key2[2, :, :7] += 100.0
    value2[2, :, :7] -= 50.0
    out2, _ = grouped_decode_attention(module, query, key2, value2, mask, scaling=0.3)
    assert torch.equal(out[2], out2[2]) and torch.equal(out[:2], out2[:2])


def test_prompts_and_training_go_through_sdpa_unchanged():
    query, key, value, _ = _inputs(q=11)
    module = _Module(groups=3).eval()
    ours, _ = grouped_decode_attention(module, query, key, value, None, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.3)
    assert torch.equal(ours, ref)
    module.train()
    q1, k1, v1, m1 = _inputs()
    ours, _ = grouped_decode_attention(module, q1, k1, v1, m1, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q1, k1, v1, m1, scaling=0.3)
    assert torch.equal(ours, ref)


def test_a_model_switched_to_grouped_decode_generates_what_sdpa_does(tokenizer):
    """fp32, a left-padded batch of two prompts, greedy: same tokens, logits within float rounding."""
    from tests.helpers.llm import tiny_llama

    tokenizer.padding_side = "left"
    enc = tokenizer(["Hello there, my invoice is wrong", "Hi"], return_tensors="pt", padding=True)
    outs = {}
    for impl in ("sdpa", "grouped"):
        model = tiny_llama(tokenizer, seed=3)
        if impl == "grouped":
            use_grouped_decode(model)
        assert model.config._attn_implementation == ("sdpa" if impl == "sdpa" else "ticketops_grouped_decode")
        with torch.inference_mode():
            outs[impl] = model.generate(
                **enc, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
    assert torch.equal(outs["sdpa"].sequences, outs["grouped"].sequences)
    for a, b in zip(outs["sdpa"].logits, outs["grouped"].logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_frozen_head_gets_a_densely_strided_input_and_the_same_logits(tokenizer):
    """The prefill's last-position view reaches the output layer with dense strides (else torch's matmul copies
    the head's whole weight at every prefill when it does not require grad); logits are unchanged."""
    from pipelines.llm.generation import dense_head_input
    from tests.helpers.llm import tiny_llama

    model = tiny_llama(tokenizer, seed=4).requires_grad_(False)  # frozen, as peft leaves the base
    ids = tokenizer(["Hello there, my invoice is wrong"], return_tensors="pt")["input_ids"]
    width = model.config.hidden_size
    with torch.inference_mode():
        before = model(input_ids=ids, logits_to_keep=1).logits
    seen: list[tuple] = []
    record = model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0].stride()))
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1)
    record.remove()
    assert seen == [(ids.shape[1] * width, width, 1)]  # without the fix: the view of the whole prompt's states
    dense_head_input(model)
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0].stride()))
    with torch.inference_mode():
        after = model(input_ids=ids, logits_to_keep=1).logits
        full = model(input_ids=ids).logits  # every position: dense already, left as it is
    assert seen[1:] == [(width, width, 1), (ids.shape[1] * width, width, 1)]
    assert torch.equal(before, after)
    torch.testing.assert_close(full[:, -1:], after)  # another product's shape: equal to float rounding
