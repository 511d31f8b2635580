"""LoRA / DoRA / QLoRA adapters against peft on tiny random transformers models (no downloads)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from transformer.adapters import FinetuneConfig, apply_adapters, merge_adapters  # noqa: E402
from transformer.adapters.lora import AdaptedLinear  # noqa: E402
from transformer.adapters.peft_format import load_peft_adapter, save_peft_adapter  # noqa: E402
from transformer.interop import load_hf_model  # noqa: E402

VOCAB = 97


def _llama_dir(tmp_path, **extra):
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=50000.0, **extra)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "base"
    model.save_pretrained(path)
    return path, model


def _randomise_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaptedLinear):
                for b in m.lora_B.values():
                    b.copy_(torch.randn(b.shape, generator=g) * 0.05)
                for mag in m.magnitude.values():
                    mag.mul_(1 + 0.1 * torch.randn(mag.shape, generator=g))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))


def test_lora_with_zero_b_equals_the_base_and_only_adapters_train(tmp_path):
    path, _ = _llama_dir(tmp_path)
    base = load_hf_model(path).eval()
    expected = _logits(base, IDS)
    model = load_hf_model(path).eval()
    report = apply_adapters(model, FinetuneConfig(method="lora", r=4, targets=["all-linear", "lm_head"][:1]))
    torch.testing.assert_close(_logits(model, IDS), expected, atol=0, rtol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(report.modules) == 2 * 4  # qkv, out, w_in, w_out per block


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_export_matches_peft_and_merge_matches_unmerged(method, tmp_path):
    path, hf_base = _llama_dir(tmp_path)
    model = load_hf_model(path).eval()
    cfg = FinetuneConfig(method=method, r=4, alpha=8, targets=["q", "v", "o", "gate", "down", "lm_head"], layers=[1])
    apply_adapters(model, cfg)
    _randomise_adapters(model)
    ours = _logits(model, IDS)
    save_peft_adapter(model, tmp_path / "adapter", cfg, base=str(path))
    reference = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path), tmp_path / "adapter").eval()
    torch.testing.assert_close(ours, _logits(reference, IDS), atol=1e-4, rtol=1e-4)
    merged = merge_adapters(model)
    assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
    torch.testing.assert_close(_logits(merged, IDS), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dora", [False, True])
def test_a_peft_adapter_trained_elsewhere_loads_onto_a_toolkit_model(dora, tmp_path):
    path, hf_base = _llama_dir(tmp_path)
    reference = peft.get_peft_model(hf_base, peft.LoraConfig(r=4, lora_alpha=16, use_dora=dora,
                                                              target_modules=["q_proj", "k_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    reference.save_pretrained(tmp_path / "adapter")
    expected = _logits(reference.eval(), IDS)
    model = load_hf_model(path).eval()
    cfg = load_peft_adapter(model, tmp_path / "adapter")
    assert (cfg.method, cfg.r, cfg.alpha, sorted(cfg.targets)) == ("dora" if dora else "lora", 4, 16.0, ["down", "k", "q", "up"])
    torch.testing.assert_close(_logits(model, IDS), expected, atol=1e-4, rtol=1e-4)


def test_adapted_fused_compiled_and_inference_paths_agree(tmp_path):
    """The eager training path (fused ops for plain modules), torch.compile and no-grad inference give the
    same outputs and gradients with adapters: no fused path reads a weight past its adapter."""
    path, _ = _llama_dir(tmp_path)
    model = load_hf_model(path)
    apply_adapters(model, FinetuneConfig(method="lora", r=4, targets=["all-linear"]))
    _randomise_adapters(model)
    model.train()
    out = model(IDS, IDS).loss
    out.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    with torch.no_grad():
        inference = model(IDS, IDS).loss
    torch.testing.assert_close(inference, out.detach(), atol=1e-5, rtol=1e-5)
    merged = merge_adapters(load_hf_model(path))  # no adapters: the plain fused model must differ
    assert not torch.allclose(merged(IDS, IDS).loss, out.detach())
    compiled = torch.compile(model)
    loss = compiled(IDS, IDS).loss
    loss.backward()
    torch.testing.assert_close(loss.detach(), out.detach(), atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)


def test_qlora_keeps_the_base_in_nf4_with_bounded_error(tmp_path):
    pytest.importorskip("torchao")
    from transformer.adapters.quant import dequantize, is_quantized, quantize_nf4, weight_bytes

    w = torch.randn(128, 256)
    q = quantize_nf4(w, 64)
    error = (dequantize(q) - w).abs()
    # NF4 has 16 levels over [-absmax, absmax] per block of 64: the worst rounding error is about half the
    # widest gap (0.28 of absmax, between 0.72 and 1.0) — bounded by 0.16 * absmax of the block
    blocks = w.reshape(-1, 64).abs().amax(1, keepdim=True)
    assert bool((error.reshape(-1, 64) <= 0.16 * blocks + 1e-3).all())
    assert error.mean() < 0.1 * w.abs().mean()
    assert weight_bytes(q) <= 0.35 * weight_bytes(w) / 2  # <= 0.175 of fp32: 4-bit codes + scales

    path, _ = _llama_dir(tmp_path)
    model = load_hf_model(path).eval()
    full = _logits(model, IDS)
    apply_adapters(model, FinetuneConfig(method="qlora", r=4, targets=["q", "v"], quant_block_size=32))
    assert is_quantized(model.decoder.blocks[0].attn.qkv_proj.base.weight)
    assert is_quantized(model.decoder.blocks[0].mlp.w_in.base.weight)  # frozen, not adapted, quantised too
    assert model.embed.tokens.weight.dtype == torch.float32
    got = _logits(model, IDS)
    assert 0 < (got - full).abs().mean() < 0.15 * full.abs().mean()  # NF4 base: close, not equal
    reference = load_hf_model(path).eval()  # the same model with every projection's weight rounded through NF4
    with torch.no_grad():
        for name, module in reference.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "head":
                module.weight.copy_(dequantize(quantize_nf4(module.weight, 32)))
    torch.testing.assert_close(got, _logits(reference, IDS), atol=1e-5, rtol=1e-5)
    loss = model(IDS, IDS).loss
    loss.backward()
    assert model.decoder.blocks[0].attn.qkv_proj.lora_B["q"].grad is not None


def test_targets_naming_no_module_list_what_exists(tmp_path):
    path, _ = _llama_dir(tmp_path)
    model = load_hf_model(path)
    with pytest.raises(ValueError, match=r"name no projection of this model in layers \[7\].*it has: down, gate, gate_up"):
        apply_adapters(model, FinetuneConfig(method="lora", targets=["q"], layers=[7]))
    with pytest.raises(ValueError, match="finetune.targets entry='query'"):
        FinetuneConfig(method="lora", targets=["query"])


def test_gpt2_adapters_round_trip_through_peft(tmp_path):
    """GPT-2 fuses q/k/v (c_attn) and stores Conv1D weights transposed: peft's fan_in_fan_out adapters."""
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    model = load_hf_model(tmp_path / "gpt2").eval()
    ft = FinetuneConfig(method="lora", r=4, alpha=8, targets=["qkv", "o", "up", "down"])
    apply_adapters(model, ft)
    _randomise_adapters(model)
    save_peft_adapter(model, tmp_path / "adapter", ft)
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    reference = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(model, IDS), _logits(reference, IDS), atol=1e-4, rtol=1e-4)
    again = load_hf_model(tmp_path / "gpt2").eval()
    assert sorted(load_peft_adapter(again, tmp_path / "adapter").targets) == ["down", "o", "qkv", "up"]
    torch.testing.assert_close(_logits(again, IDS), _logits(model, IDS), atol=1e-6, rtol=1e-6)
