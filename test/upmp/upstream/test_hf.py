"""The hf:<dir> upstream (upmp/upstream/hf.py) against transformers' own forward with
output_hidden_states=True on the same audio: every hidden state (0 included), the layer count, the
frame count. Tiny randomly initialised models saved with save_pretrained; nothing is downloaded."""
import numpy as np
import pytest
import torch


def save_tiny(kind: str, path, feat_extract_norm: str):
    import transformers
    cfg_cls, model_cls = {"wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
                          "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model)}[kind]
    cfg = cfg_cls(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=8,
                  feat_extract_norm=feat_extract_norm, do_stable_layer_norm=feat_extract_norm == "layer")
    torch.manual_seed(1)
    model = model_cls(cfg)
    with torch.no_grad():  # non-trivial layer norms and biases, as in a trained model
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind, norm", [("wavlm", "group"), ("wav2vec2", "layer")])
def test_layer_stack_equals_transformers_hidden_states(kind, norm, tmp_path, monkeypatch):
    import transformers
    from upmp.upstream import build_upstream
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = save_tiny(kind, tmp_path / kind, norm)
    upstream = build_upstream(f"hf:{path}")
    reference = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    assert type(reference).__name__ == {"wavlm": "WavLMModel", "wav2vec2": "Wav2Vec2Model"}[kind]
    assert (upstream.num_layers, upstream.dim, upstream.frame_shift) == (4, 32, 0.02)  # 3 layers + hidden state 0
    rng = np.random.default_rng(0)
    wavs = [torch.from_numpy(0.1 * rng.standard_normal(n).astype(np.float32)) for n in (16000, 11111)]
    want = []
    for wav in wavs:
        with torch.no_grad():
            hidden = reference(wav[None], output_hidden_states=True).hidden_states   # L x (1, T, D)
        assert len(hidden) == 4
        stack, lengths = upstream(wav[None], torch.tensor([len(wav)]))
        T = hidden[0].shape[1]
        assert T == (len(wav) - 400) // 320 + 1 and stack.shape == (1, 32, 4, T) and lengths.tolist() == [T]
        for layer in range(4):  # hidden state 0 (CNN + projection) first, then each Transformer layer
            torch.testing.assert_close(stack[0, :, layer].T, hidden[layer][0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(stack[0, :, 0], stack[0, :, -1], atol=1e-2)  # the layers differ
        want.append(hidden)
    if norm == "layer":  # an attention mask keeps a padded batch's rows equal to the single utterances
        batch = torch.zeros(2, len(wavs[0]))
        for i, wav in enumerate(wavs):
            batch[i, :len(wav)] = wav
        stack, lengths = upstream(batch, torch.tensor([len(w) for w in wavs]))
        for i, hidden in enumerate(want):
            T = hidden[0].shape[1]
            assert lengths[i] == T
            for layer in range(4):
                torch.testing.assert_close(stack[i, :, layer, :T].T, hidden[layer][0], rtol=1e-4, atol=1e-4)
