"""The upstream interface: GE2E (resemblyzer weights), HuggingFace directories, S3PRL names."""

import numpy as np
import pytest
import torch

from helpers import tone
from upmp.errors import UpstreamError
from upmp.upstream import build_upstream


@pytest.fixture(scope="module")
def ge2e():
    return build_upstream("ge2e")


def speechlike(seconds, seed=0):
    """A tone with a syllable-rate envelope and noise (so the mel frames vary)."""
    x = tone(seconds, 180, seed=seed)
    t = np.arange(len(x)) / 16000
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) +
            0.05 * np.random.default_rng(seed).standard_normal(len(x))).astype(np.float32)


def test_ge2e_reproduces_the_package_embedding(ge2e):
    """Same weights, same numbers: our front end + layers + the package's linear head give
    resemblyzer's own utterance embedding for a fixed waveform."""
    from resemblyzer import VoiceEncoder
    wav = speechlike(3.3)
    encoder = VoiceEncoder(device="cpu", verbose=False)
    expected = encoder.embed_utterance(wav)
    wav_slices, mel_slices = encoder.compute_partial_slices(len(wav), 1.3, 0.75)
    padded = np.pad(wav, (0, max(0, wav_slices[-1].stop - len(wav))))
    mels = ge2e.mel_frames(torch.from_numpy(padded)[None], torch.tensor([len(padded)]), normalise=False)
    partials = torch.stack([mels[0, s] for s in mel_slices])
    with torch.no_grad():
        last = ge2e.layers(partials)[-1][:, -1]            # last LSTM layer, last frame
        e = torch.relu(ge2e.linear(last))
        e = torch.nn.functional.normalize(e, dim=1).mean(0)
    np.testing.assert_allclose(torch.nn.functional.normalize(e, dim=0).numpy(), expected, atol=1e-5)


def test_ge2e_stack_shapes_and_padding(ge2e):
    assert (ge2e.num_layers, ge2e.dim, ge2e.frame_shift) == (4, 256, 0.01)
    a, b = speechlike(1.0, 1), speechlike(1.7, 2)
    wavs = torch.zeros(2, len(b))
    wavs[0, :len(a)] = torch.from_numpy(a)
    wavs[0, len(a):] = 0.3  # junk in the padding must not matter
    wavs[1] = torch.from_numpy(b)
    stack, lengths = ge2e(wavs, torch.tensor([len(a), len(b)]))
    assert lengths.tolist() == [len(a) // 160 + 1, len(b) // 160 + 1]
    assert stack.shape == (2, 256, 4, lengths[1])
    alone, n = ge2e(torch.from_numpy(a)[None], torch.tensor([len(a)]))
    torch.testing.assert_close(stack[0, :, :, :n[0]], alone[0], atol=1e-4, rtol=1e-4)
    assert torch.all(stack[0, 40:, 0] == 0)  # hidden state 0: 40 log-mel channels, zero-padded
    assert not ge2e.training and not any(p.requires_grad for p in ge2e.parameters())


def test_ge2e_bad_weights_path(tmp_path):
    with pytest.raises(UpstreamError, match="upstream checkpoint not found"):
        build_upstream("ge2e", str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "wav2vec2", "data2vec-audio"])
def test_hf_directory_offline(tmp_path, kind, monkeypatch):
    import transformers
    cfg_cls, model_cls = {
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        "data2vec-audio": (transformers.Data2VecAudioConfig, transformers.Data2VecAudioModel),
    }[kind]
    cfg = cfg_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                  vocab_size=8)
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(tmp_path / kind)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    up = build_upstream(f"hf:{tmp_path / kind}")
    assert (up.num_layers, up.dim, up.frame_shift) == (3, 32, 0.02)
    wavs = torch.randn(2, 16000)
    stack, lengths = up(wavs, torch.tensor([16000, 9600]))
    assert lengths.tolist() == [49, 29]
    assert stack.shape == (2, 32, 3, 49)


def test_hf_missing_directory(tmp_path):
    with pytest.raises(UpstreamError, match="config.json not found"):
        build_upstream(f"hf:{tmp_path}")


def test_s3prl_name_through_the_interface(tiny_wavlm):
    up = build_upstream("wavlm_local", str(tiny_wavlm))
    stack, lengths = up(torch.randn(1, 8000), torch.tensor([8000]))
    assert stack.shape == (1, 32, 3, 25) and lengths.tolist() == [25]
