"""Front ends: paper shapes, agreement with librosa (the authors' and peers' tool), batching and CPU/GPU sameness."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fcn.frontends import INPUTS, FrontEnd, FrontEndParams, SavgolDelta, compute

librosa = pytest.importorskip("librosa")


def test_paper_shapes():
    p = FrontEndParams()
    assert p.n_samples == 349_440 and p.n_frames == 1366  # PAPER.md: 29.12 s at 12 kHz → 96×1366
    out = compute(torch.randn(2, p.n_samples) * 0.1, INPUTS, p)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "mel": (2, 96, 1366),
        "stft": (2, 128, 1366),
        "mfcc": (2, 90, 1366),
    }


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
    p = FrontEndParams.for_seconds(3.0, variant="plain-db")
    ours = FrontEnd("mel", p)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=12000, n_fft=512, hop_length=256, n_mels=96),
        ref=1.0,
        amin=1e-10,
        top_db=None,
    )
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-2  # dB


def test_mfcc_matches_librosa():
    y = _wave(seed=1)
    p = FrontEndParams.for_seconds(3.0)
    ours = FrontEnd("mfcc", p)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.feature.mfcc(y=y, sr=12000, n_mfcc=30, n_fft=512, hop_length=256, n_mels=96)
    assert np.abs(ours[:30] - ref).max() < 1e-2
    # Δ and ΔΔ are librosa's delta(order=1) and delta(order=2), edges included ("librosa" deltas, the default)
    assert p.deltas == "librosa"
    assert np.abs(ours[30:60] - librosa.feature.delta(ref, order=1)).max() < 1e-3
    assert np.abs(ours[60:] - librosa.feature.delta(ref, order=2)).max() < 1e-3


@pytest.mark.parametrize("order", [1, 2])
def test_savgol_delta_is_librosas_delta_exactly(order):
    x = np.random.default_rng(order).standard_normal((2, 30, 50)).astype(np.float32) * 20
    ours = SavgolDelta(9, order)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, librosa.feature.delta(x, order=order, axis=-1), atol=1e-4, rtol=0)


def test_nested_deltas_are_delta_of_delta_as_labelled():
    """The old stores' ΔΔ: Δ applied twice with replicated edges (not librosa's second derivative: they differ)."""
    y = _wave(seed=4)
    p = FrontEndParams.for_seconds(3.0, deltas="nested")
    ours = FrontEnd("mfcc", p)(torch.from_numpy(y)[None])[0, 0]
    import torchaudio.transforms as T

    delta = T.ComputeDeltas(win_length=9)
    torch.testing.assert_close(ours[60:], delta(delta(ours[:30])), atol=1e-4, rtol=1e-4)
    librosa_dd = FrontEnd("mfcc", replace(p, deltas="librosa"))(torch.from_numpy(y)[None])[0, 0, 60:]
    assert (ours[60:] - librosa_dd).abs().max() > 0.1


def _dynamic_wave(seconds, sr=12000, seed=0):
    """A tone for half the clip over noise 14 dB down, silent for the last quarter: the authors' floor bites on about
    a quarter of the values."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * 440 * t) * (t < 0.5 * seconds) + 0.1 * rng.standard_normal(len(t))
    y[int(0.75 * len(y)) :] = 0.0
    return y.astype(np.float32)


def test_paper_preset_mel_is_the_authors_floored_log_of_mel_squared():
    """The paper preset's mel = librosa.power_to_db(mel**2, ref=1.0, top_db=80) (= the authors' logamplitude call)
    on the same audio: values more than 80 dB below the clip's peak on that scale are raised to peak - 80."""
    from fcn.config import PRESETS, RunConfig

    p = RunConfig(**PRESETS["paper"]).frontend
    assert p.variant == "authors" and p.n_frames == 1366
    y = _dynamic_wave(p.seconds)[: p.n_samples]
    ours = FrontEnd("mel", p)(torch.from_numpy(y)[None])[0, 0].numpy()
    mel = librosa.feature.melspectrogram(y=y, sr=12000, n_fft=512, hop_length=256, n_mels=96)
    ref = librosa.power_to_db(mel**2, ref=1.0, amin=1e-10, top_db=80.0)
    assert ours.shape == ref.shape == (96, 1366)
    floored = np.isclose(ref, ref.max() - 80.0)
    assert 0.2 < floored.mean() < 0.9  # the floor is really in play on this clip
    assert np.abs(ours - ref).max() < 2e-2  # dB, on the doubled scale
    # the floor-free variant differs exactly where the floor acts
    plain = FrontEnd("mel", replace(p, variant="plain-db"))(torch.from_numpy(y)[None])[0, 0].numpy()
    gap = 2 * plain - ours
    assert np.abs(gap[~floored]).max() < 2e-2 and gap[floored].max() < 2e-2 and gap[floored].min() < -50


def test_variant_is_checked_and_old_params_mean_the_old_front_end():
    with pytest.raises(ValueError, match="unknown front-end variant 'loud'"):
        FrontEndParams(variant="loud")
    old = {k: v for k, v in FrontEndParams().to_dict().items() if k not in ("variant", "deltas")}
    assert FrontEndParams.from_dict(old) == FrontEndParams(variant="plain-db", deltas="nested")
    assert FrontEndParams.from_dict(FrontEndParams().to_dict()) == FrontEndParams()


def test_a_store_of_another_variant_is_refused_by_name(tmp_path):
    from fcn.errors import UserError
    from fcn.store import check_store, write_store

    p = FrontEndParams.for_seconds(1.0, variant="plain-db")
    feats = {k: np.zeros((2, p.rows(k), p.n_frames), np.float16) for k in INPUTS}
    path = write_store(
        tmp_path / "s.h5",
        dataset="mtat",
        tags=[f"t{i}" for i in range(50)],
        params=p,
        inputs=list(INPUTS),
        clip_ids=["a", "b"],
        paths=["/a", "/b"],
        splits=["train", "test"],
        labels=np.zeros((2, 50), np.uint8),
        feature_chunks=[feats],
    )
    assert check_store(path, input="mel", params=p)["frontend"].variant == "plain-db"
    with pytest.raises(UserError, match="holds the front-end variant 'plain-db', and this run asks for 'authors'"):
        check_store(path, input="mel", params=replace(p, variant="authors"))


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
        one = compute(waves[i : i + 1], INPUTS, p)
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
