"""The kernel layer and the serial reference, against independent implementations."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import kernels as K
from bench.kernels import hugging_face_state_dict, torch_encoder_layer
from conftest import padded_batch, tokenize


def naive_layer(x, w: K.LayerWeights, mask01, n_heads, eps):
    """A deliberately plain post-LN BERT layer: explicit softmax, per-matrix q/k/v."""
    batch, seq, _ = x.shape
    h = w.qkv_weight.shape[0] // 3
    d = h // n_heads
    wq, wk, wv = w.qkv_weight.split(h)
    bq, bk, bv = w.qkv_bias.split(h)

    def heads(t):
        return t.view(batch, seq, n_heads, d).transpose(1, 2)

    q, k, v = heads(x @ wq.T + bq), heads(x @ wk.T + bk), heads(x @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(mask01[:, None, None, :] == 0, float("-inf"))
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, h)
    a = F.layer_norm(x + context @ w.out_weight.T + w.out_bias, w.ln1_weight.shape, w.ln1_weight, w.ln1_bias, eps)
    inner = a @ w.ffn_in_weight.T + w.ffn_in_bias
    gelu = 0.5 * inner * (1 + torch.erf(inner / math.sqrt(2)))
    return F.layer_norm(a + gelu @ w.ffn_out_weight.T + w.ffn_out_bias, w.ln2_weight.shape,
                        w.ln2_weight, w.ln2_bias, eps)


@pytest.fixture
def tiny():
    cfg = K.preset("tiny")
    return cfg, K.init_weights(cfg, seed=3)


def test_original_layer_matches_naive_implementation(tiny):
    cfg, weights = tiny
    ids, mask = padded_batch(cfg.vocab, batch=3, seq=12)
    x = K.embed(ids, weights.embeddings, cfg.ln_eps)
    ours = K.layer_forward(x, weights.layers[0], K.additive_mask(mask), cfg.heads, cfg.ln_eps)
    torch.testing.assert_close(ours, naive_layer(x, weights.layers[0], mask, cfg.heads, cfg.ln_eps),
                               rtol=1e-5, atol=1e-5)


def test_original_layer_matches_torch_transformer_encoder_layer(tiny):
    cfg, weights = tiny
    w = weights.layers[0]
    ref = torch_encoder_layer(cfg, w)   # torch's layer on our weight tensors (bench.kernels' peer)
    ids, mask = padded_batch(cfg.vocab, batch=3, seq=12)
    x = K.embed(ids, weights.embeddings, cfg.ln_eps)
    ours = K.layer_forward(x, w, K.additive_mask(mask), cfg.heads, cfg.ln_eps)
    with torch.no_grad():
        theirs = ref(x, src_key_padding_mask=mask == 0)
    valid = mask.bool()  # the fast path may zero padded query rows; compare the real tokens
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)


def test_reference_matches_hugging_face_on_real_minilm(minilm_dir, monkeypatch):
    transformers = pytest.importorskip("transformers", reason="transformers not installed (test extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, weights = K.load_checkpoint(minilm_dir)
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.ffn) == (6, 384, 12, 1536)
    ids, mask = tokenize(minilm_dir)
    assert not bool(mask.all()), "the batch must contain padding"
    hf = transformers.BertModel.from_pretrained(str(minilm_dir), local_files_only=True,
                                                add_pooling_layer=False).eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    ours = K.ReferenceModel(cfg, weights)(ids, mask)
    diff = (ours - theirs).abs().max().item()  # every position, padded ones included
    print(f"MiniLM reference vs Hugging Face BertModel: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_checkpoint_with_bert_prefix_and_bin_format(minilm_dir, tmp_path):
    from safetensors.torch import load_file
    state = {f"bert.{k}": v for k, v in load_file(str(minilm_dir / "model.safetensors")).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
    _, prefixed = K.load_checkpoint(tmp_path)
    _, plain = K.load_checkpoint(minilm_dir)
    assert torch.equal(prefixed.layers[3].qkv_weight, plain.layers[3].qkv_weight)


def test_hugging_face_names_round_trip(minilm_dir):
    """bench.kernels hands our weights to its Hugging Face peer under HF's names: the inverse of loading."""
    from safetensors.torch import load_file
    original = load_file(str(minilm_dir / "model.safetensors"))
    _, weights = K.load_checkpoint(minilm_dir)
    back = hugging_face_state_dict(weights)
    assert set(back) <= set(original) and len(back) == len(weights.layers) * 16 + 5
    for key, tensor in back.items():
        assert torch.equal(tensor, original[key].float()), key


def test_checkpoint_refused_for_decoupled_config(minilm_dir):
    cfg = K.config_from_checkpoint(minilm_dir).replace(n_blocks=3, n_div=4)
    with pytest.raises(K.ConfigError, match="decoupled"):
        K.load_checkpoint(minilm_dir, cfg)


def test_decoupled_weights_shaped_as_designed():
    cfg = K.preset("bert-base", n_blocks=4, n_div=4)
    assert cfg.layer_kinds() == ["decoupled", "decoupled", "original"] * 4
    sub = K.init_sub_block(cfg, seed=0, layer=0, sub_block=1)
    h, w, f = 768, 192, 3072
    assert sub.qkv_weight.shape == (3 * h, w)   # x_i W_i^{q,k,v}: (h/N_div) x h each
    assert sub.out_weight.shape == (w, h)       # W_i^o: h x (h/N_div)
    assert sub.ffn_in_weight.shape == (f, w) and sub.ffn_out_weight.shape == (w, f)
    assert sub.ln1_weight.shape == (w,)


def test_decoupled_parameter_count_within_one_percent():
    original = K.init_weights(K.preset("bert-base"), seed=0).numel()
    decoupled = K.init_weights(K.preset("bert-base", n_blocks=4, n_div=4), seed=0).numel()
    assert abs(decoupled - original) / original < 0.01


def test_sub_blocks_only_read_their_own_slice():
    cfg = K.preset("tiny", n_blocks=2, n_div=4)
    weights = K.init_weights(cfg, seed=1)
    ids, mask = padded_batch(cfg.vocab)
    x = K.embed(ids, weights.embeddings, cfg.ln_eps)
    slices = list(x.split(cfg.sub_width, dim=-1))
    base = K.decoupled_layer_forward(slices, weights.layers[0], K.additive_mask(mask), cfg)
    slices[2] = slices[2] + torch.randn_like(slices[2])
    perturbed = K.decoupled_layer_forward(slices, weights.layers[0], K.additive_mask(mask), cfg)
    for i in (0, 1, 3):
        assert torch.equal(base[i], perturbed[i])
    assert not torch.equal(base[2], perturbed[2])


def test_n_blocks_equal_layers_is_the_original_model():
    base = K.preset("tiny")
    explicit = base.replace(n_blocks=base.layers, n_div=4)
    assert not explicit.is_decoupled and explicit.layer_kinds() == ["original"] * base.layers
    ids, mask = padded_batch(base.vocab)
    out_a = K.ReferenceModel(base, K.init_weights(base, 5))(ids, mask)
    out_b = K.ReferenceModel(explicit, K.init_weights(explicit, 5))(ids, mask)
    assert torch.equal(out_a, out_b)


def test_seeded_init_is_deterministic_and_layerwise():
    cfg = K.preset("tiny", n_blocks=2, n_div=2)
    a, b = K.init_weights(cfg, 7), K.init_weights(cfg, 7)
    assert torch.equal(a.layers[1].qkv_weight, b.layers[1].qkv_weight)
    assert torch.equal(K.init_layer(cfg, 7, 2)[1].ffn_in_weight, a.layers[2][1].ffn_in_weight)
    assert not torch.equal(K.init_weights(cfg, 8).layers[1].qkv_weight, a.layers[1].qkv_weight)


@pytest.mark.parametrize("changes, constraint", [
    (dict(layers=12, n_blocks=5), "layers % n_blocks"),
    (dict(n_blocks=4, n_div=5), "hidden % n_div"),
    (dict(heads=5), "hidden % heads"),
    (dict(n_blocks=13), "n_blocks <= layers"),
    (dict(layers=0), "layers must be a positive integer"),
    (dict(n_div=0), "n_div must be a positive integer"),
    (dict(hidden=768.0), "hidden must be a positive integer"),
])
def test_invalid_configurations_name_their_constraint(changes, constraint):
    with pytest.raises(K.ConfigError, match=re.escape(constraint)) as err:
        K.preset("bert-base", **changes)
    assert "\n" not in str(err.value)


def test_unknown_preset():
    with pytest.raises(K.ConfigError, match="unknown model preset"):
        K.preset("gpt-5")


def test_flops_count_decoupled_attention_n_div_times():
    cfg = K.preset("bert-base")
    dec = cfg.replace(n_blocks=4, n_div=4)
    assert K.forward_flops(dec, 1, 128) > K.forward_flops(cfg, 1, 128)
    assert K.layer_flops(dec, 1, 128, decoupled=False) == K.layer_flops(cfg, 1, 128, decoupled=False)


def test_kernels_do_not_import_mpi():
    from pathlib import Path
    root = Path(K.__file__).parent
    for source in root.glob("*.py"):
        assert "mpi4py" not in source.read_text(), source
