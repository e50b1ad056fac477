"""Front ends: paper shapes, agreement with librosa (the authors' and peers' tool), batching and CPU/GPU sameness."""
import numpy as np
import pytest
import torch

from fcn.frontends import INPUTS, FrontEnd, FrontEndParams, compute

librosa = pytest.importorskip("librosa")


def test_paper_shapes():
    p = FrontEndParams()
    assert p.n_samples == 349_440 and p.n_frames == 1366  # PAPER.md: 29.12 s at 12 kHz → 96×1366
    out = compute(torch.randn(2, p.n_samples) * 0.1, INPUTS, p)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "mel": (2, 96, 1366), "stft": (2, 128, 1366), "mfcc": (2, 90, 1366)}


def test_for_seconds_rounds_to_whole_hops():
    p = FrontEndParams.for_seconds(4.0)
    assert p.n_samples % p.hop == 0 and p.n_frames == 1 + p.n_samples // p.hop
    assert FrontEndParams.for_seconds(29.12) == FrontEndParams()


def _wave(seconds=3.0, sr=12000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_mel_matches_librosa():
    y = _wave()
    p = FrontEndParams.for_seconds(3.0)
    ours = FrontEnd("mel", p)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=12000, n_fft=512, hop_length=256, n_mels=96),
                              ref=1.0, amin=1e-10, top_db=None)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-2  # dB


def test_mfcc_matches_librosa():
    y = _wave(seed=1)
    p = FrontEndParams.for_seconds(3.0)
    ours = FrontEnd("mfcc", p)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.feature.mfcc(y=y, sr=12000, n_mfcc=30, n_fft=512, hop_length=256, n_mels=96)
    assert np.abs(ours[:30] - ref).max() < 1e-2
    # Δ over the interior (the edges are padded differently by design)
    d = librosa.feature.delta(ref)
    assert np.abs(ours[30:60, 5:-5] - d[:, 5:-5]).max() < 1e-2


def test_stft_is_log_magnitude_by_hand():
    y = _wave(seed=2)
    p = FrontEndParams.for_seconds(3.0)
    ours = FrontEnd("stft", p)(torch.from_numpy(y)[None])[0, 0].numpy()
    mag = np.abs(librosa.stft(y, n_fft=256, hop_length=256, center=True, pad_mode="constant"))[:-1]
    assert ours.shape == (128, 1 + len(y) // 256)
    assert np.abs(ours - 20 * np.log10(np.maximum(mag, 1e-10)))[:, 1:-1].max() < 0.05


def test_batched_equals_one_by_one():
    p = FrontEndParams.for_seconds(2.0)
    waves = torch.from_numpy(np.stack([_wave(2.0, seed=s)[: p.n_samples] for s in range(3)]))
    batch = compute(waves, INPUTS, p)
    for i in range(3):
        one = compute(waves[i:i + 1], INPUTS, p)
        for k in INPUTS:
            torch.testing.assert_close(batch[k][i], one[k][0], atol=1e-3, rtol=1e-4)


def test_unknown_input():
    with pytest.raises(ValueError, match="unknown input 'cqt'"):
        FrontEnd("cqt")


def test_a_clip_features_do_not_depend_on_its_batch():
    p = FrontEndParams.for_seconds(2.0)
    loud = torch.from_numpy(_wave(2.0, seed=3)[: p.n_samples])
    quiet = loud * 1e-6  # 120 dB quieter: a batch-wide dB floor would flatten it
    both = compute(torch.stack([loud, quiet]), INPUTS, p)
    alone = compute(quiet[None], INPUTS, p)
    for k in INPUTS:
        torch.testing.assert_close(both[k][1], alone[k][0], atol=1e-3, rtol=1e-4)


def test_mfcc_from_the_mel_equals_the_mfcc_front_end_alone():
    # compute() derives the MFCC from the mel's dB when both are asked for (one STFT fewer); the values must be those
    # of the MFCC front end run on its own, in either order of the inputs
    p = FrontEndParams.for_seconds(2.0)
    waves = torch.from_numpy(np.stack([_wave(2.0, seed=s)[: p.n_samples] for s in range(2)]))
    alone = FrontEnd("mfcc", p)(waves)[:, 0]
    for kinds in (("mel", "mfcc"), ("mfcc", "stft", "mel")):
        out = compute(waves, kinds, p)
        assert tuple(out) == kinds
        torch.testing.assert_close(out["mfcc"], alone, atol=0, rtol=0)
