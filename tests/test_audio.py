"""fcn.audio: decode MP3/WAV at any rate and channel count to mono 12 kHz; fix_length; one-line AudioError."""

import numpy as np
import pytest
import soundfile as sf

from fcn.audio import (
    CLIP_SAMPLES,
    DECODERS,
    DEFAULT_DECODER,
    SAMPLE_RATE,
    TOLERANCE_DB,
    AudioError,
    decode,
    fix_length,
    info,
    load,
)

# every test of the load() contract runs for every decoder
every_decoder = pytest.mark.parametrize("decoder", DECODERS)


def _tone(sr, seconds, freq=440.0, channels=2):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def test_constants_match_paper():
    assert SAMPLE_RATE == 12_000 and CLIP_SAMPLES == 349_440  # 29.12 s at 12 kHz (PAPER.md)


@every_decoder
@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("MP3", "mp3")])
def test_stereo_44k_to_mono_12k(tmp_path, fmt, ext, decoder):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _tone(44_100, 1.5), 44_100, format=fmt)
    x = load(path, decoder=decoder)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 18_000  # 1.5 s at 12 kHz (the MP3 encoder's delay and padding are trimmed)
    assert abs(_peak_hz(x, 12_000) - 440) < 2  # the pitch survives the resampler
    i = info(path, decoder)
    assert (i.samplerate, i.channels) == (44_100, 2) and abs(i.seconds - 1.5) < 0.01


@every_decoder
def test_mono_16k_mp3_like_mtat(tmp_path, decoder):
    path = tmp_path / "clip.mp3"
    sf.write(path, _tone(16_000, 2.0, 1000.0, channels=1), 16_000, format="MP3")
    x = load(path, decoder=decoder)
    assert len(x) == 24_000 and abs(_peak_hz(x, 12_000) - 1000) < 2
    assert len(load(path, sr=16_000, decoder=decoder)) == 32_000  # no resampling at the native rate


@every_decoder
def test_downmix_is_the_channel_mean(tmp_path, decoder):
    path = tmp_path / "two.wav"
    n = 1200
    sf.write(path, np.stack([np.full(n, 0.5), np.full(n, 0.1)], axis=1).astype(np.float32), 12_000)
    x = load(path, decoder=decoder)
    np.testing.assert_allclose(x, 0.3, atol=1e-4)


@every_decoder
def test_silence_is_valid(tmp_path, decoder):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((22_050, 2), np.float32), 22_050)
    x = load(path, decoder=decoder)
    assert len(x) == 12_000 and not np.any(x)


def test_fix_length_pads_at_the_end_and_crops_the_centre():
    x = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(x, 4), [4, 5, 6, 7])  # (10 - 4) // 2 = 3 dropped in front
    np.testing.assert_array_equal(fix_length(x, 13), np.r_[x, 0, 0, 0])
    assert fix_length(x, 10) is x
    assert len(fix_length(np.zeros(100, np.float32))) == CLIP_SAMPLES


@every_decoder
@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.mp3", b"", "empty file"),
        ("text.wav", b"this is not audio\n" * 20, "not audio"),
        ("noise.mp3", bytes(range(256)) * 40, "not audio"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, name, content, reason, decoder):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError) as e:
        load(path, decoder=decoder)
    msg = str(e.value)
    assert str(path) in msg and reason in msg and "\n" not in msg
    assert e.value.path == str(path)


@every_decoder
def test_zero_frames_and_missing_file(tmp_path, decoder):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0,), np.float32), 16_000)
    with pytest.raises(AudioError, match="zero frames"):
        load(path, decoder=decoder)
    with pytest.raises(AudioError, match="no such file"):
        load(tmp_path / "absent.mp3", decoder=decoder)


def _snr_db(ref, x):
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - x) ** 2), 1e-30))


@pytest.mark.parametrize("sr,channels", [(16_000, 1), (44_100, 2)])  # MTAT's and MSD's formats
def test_every_decoder_decodes_the_same_samples(tmp_path, sr, channels):
    path = tmp_path / "music.mp3"
    rng = np.random.default_rng(0)
    x = _tone(sr, 2.0, 330.0, channels) + 0.05 * rng.standard_normal((int(sr * 2.0), channels)).squeeze()
    sf.write(path, x.astype(np.float32), sr, format="MP3")
    ref, ref_sr = decode(path, DEFAULT_DECODER)
    assert ref_sr == sr and len(ref) == int(sr * 2.0)  # priming and padding trimmed: exactly the samples written
    for d in DECODERS:
        y, y_sr = decode(path, d)
        assert y_sr == sr and len(y) == len(ref), d  # same length and no delay between decoders
        assert _snr_db(ref, y) >= TOLERANCE_DB, (d, _snr_db(ref, y))
        assert _snr_db(load(path, decoder=DEFAULT_DECODER), load(path, decoder=d)) >= TOLERANCE_DB, d


@every_decoder
def test_a_corrupt_mp3_fails_cleanly(tmp_path, decoder):
    """A file that starts like an MP3 (an ID3 tag) and then holds garbage: one AudioError line, no crash."""
    path = tmp_path / "corrupt.mp3"
    garbage = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + garbage)
    with pytest.raises(AudioError) as e:
        load(path, decoder=decoder)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and ("not audio" in msg or "zero frames" in msg), msg


def test_unknown_decoder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown decoder 'mad'"):
        load(tmp_path / "x.mp3", decoder="mad")


def test_lame_tag_gapless_values(tmp_path):
    from fcn.audio import MP3_DECODER_DELAY, _lame_gapless

    path = tmp_path / "t.mp3"
    sf.write(path, _tone(16_000, 1.0, channels=1), 16_000, format="MP3")
    head, tail = _lame_gapless(str(path))
    assert head == 576 + MP3_DECODER_DELAY  # LAME's encoder delay + the decoder's
    assert 0 <= tail < 1152 * 2
    wav = tmp_path / "t.wav"
    sf.write(wav, _tone(16_000, 0.1, channels=1), 16_000)
    assert _lame_gapless(str(wav)) is None


def test_a_store_records_its_decoder_and_parts_of_two_decoders_never_mix(tmp_path):
    """fcn.preprocess's --decoder reaches the store's attrs, and a resumed build never reuses another decoder's parts
    (the parts' manifest names the decoder)."""
    from fcn.data import MTAT_TOP50, Item
    from fcn.errors import UserError
    from fcn.frontends import FrontEndParams
    from fcn.preprocess import _manifest, build
    from fcn.store import read_meta

    items = []
    for i in range(2):
        path = tmp_path / f"c{i}.mp3"
        sf.write(path, _tone(16_000, 1.0, 300.0 + 100 * i, channels=1), 16_000, format="MP3")
        items.append(Item(f"c{i}", str(path), np.zeros(50, np.uint8), "train"))
    params = FrontEndParams.for_seconds(1.0)
    assert _manifest(items, params, ("mel",), 32, "soundfile") != _manifest(items, params, ("mel",), 32, "ffmpeg")
    out = tmp_path / "s.h5"
    rep = build(
        items,
        list(MTAT_TOP50),
        dataset="mtat",
        out=out,
        params=params,
        inputs=("mel",),
        workers=1,
        progress=False,
        decoder="ffmpeg",
    )
    assert rep.written == 2 and not rep.skipped and read_meta(out)["decoder"] == "ffmpeg"
    with pytest.raises(UserError, match="unknown decoder 'mad'"):
        build(items, list(MTAT_TOP50), dataset="mtat", out=out, params=params, decoder="mad")


def test_preprocess_cli_offers_the_decoders(capsys):
    from fcn.preprocess import main

    with pytest.raises(SystemExit):
        main(["--decoder", "mad"])
    err = capsys.readouterr().err
    assert "invalid choice: 'mad'" in err and all(d in err for d in DECODERS)
