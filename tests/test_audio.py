"""fcn.audio: decode MP3/WAV at any rate and channel count to mono 12 kHz; fix_length; one-line AudioError."""
import numpy as np
import pytest
import soundfile as sf

from fcn.audio import CLIP_SAMPLES, SAMPLE_RATE, AudioError, fix_length, info, load


def _tone(sr, seconds, freq=440.0, channels=2):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def test_constants_match_paper():
    assert SAMPLE_RATE == 12_000 and CLIP_SAMPLES == 349_440  # 29.12 s at 12 kHz (PAPER.md)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("MP3", "mp3")])
def test_stereo_44k_to_mono_12k(tmp_path, fmt, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _tone(44_100, 1.5), 44_100, format=fmt)
    x = load(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 18_000  # 1.5 s at 12 kHz (libsndfile trims the MP3 encoder delay)
    assert abs(_peak_hz(x, 12_000) - 440) < 2  # the pitch survives the resampler
    i = info(path)
    assert (i.samplerate, i.channels) == (44_100, 2) and abs(i.seconds - 1.5) < 0.01


def test_mono_16k_mp3_like_mtat(tmp_path):
    path = tmp_path / "clip.mp3"
    sf.write(path, _tone(16_000, 2.0, 1000.0, channels=1), 16_000, format="MP3")
    x = load(path)
    assert len(x) == 24_000 and abs(_peak_hz(x, 12_000) - 1000) < 2
    assert len(load(path, sr=16_000)) == 32_000  # no resampling at the native rate


def test_downmix_is_the_channel_mean(tmp_path):
    path = tmp_path / "two.wav"
    n = 1200
    sf.write(path, np.stack([np.full(n, 0.5), np.full(n, 0.1)], axis=1).astype(np.float32), 12_000)
    x = load(path)
    np.testing.assert_allclose(x, 0.3, atol=1e-4)


def test_silence_is_valid(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((22_050, 2), np.float32), 22_050)
    x = load(path)
    assert len(x) == 12_000 and not np.any(x)


def test_fix_length_pads_at_the_end_and_crops_the_centre():
    x = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(x, 4), [4, 5, 6, 7])  # (10 - 4) // 2 = 3 dropped in front
    np.testing.assert_array_equal(fix_length(x, 13), np.r_[x, 0, 0, 0])
    assert fix_length(x, 10) is x
    assert len(fix_length(np.zeros(100, np.float32))) == CLIP_SAMPLES


@pytest.mark.parametrize("name,content,reason", [
    ("empty.mp3", b"", "empty file"),
    ("text.wav", b"this is not audio\n" * 20, "not audio"),
    ("noise.mp3", bytes(range(256)) * 40, "not audio"),
])
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and reason in msg and "\n" not in msg
    assert e.value.path == str(path)


def test_zero_frames_and_missing_file(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0,), np.float32), 16_000)
    with pytest.raises(AudioError, match="zero frames"):
        load(path)
    with pytest.raises(AudioError, match="no such file"):
        load(tmp_path / "absent.mp3")
