"""fcn.audio2016, the authors' input as 2016 librosa made it: the MP3 decoder delay kept or dropped (`--mp3-delay`),
on a synthesised MP3 with and without its LAME tag (the authors' example MP3s have none and cannot ship)."""

import numpy as np
import pytest
import soundfile as sf

from fcn.audio import MP3_DECODER_DELAY, _lame_gapless, resample
from fcn.audio2016 import load_2016, resample_kaiser_best_2016, to_int16_grid

SR = 44_100
KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # MPEG-1 layer III bitrate index


def _mp3s(tmp_path):
    """(tagged, tagless): a tone whose first sample is loud, as LAME writes it, and the same stream without its first
    frame (the Xing/Info frame that holds the LAME tag)."""
    x = np.zeros(2 * SR, np.float32)
    x[SR // 2 :] = 0.3 * np.sin(2 * np.pi * 440 * np.arange(len(x) - SR // 2) / SR)
    tagged = tmp_path / "tagged.mp3"
    sf.write(tagged, x, SR, format="MP3")
    b = tagged.read_bytes()
    assert b[:2] == b"\xff\xfb" and (b"Xing" in b[:64] or b"Info" in b[:64])  # MPEG-1 layer III, no ID3 in front
    first = 144 * KBPS[b[2] >> 4] * 1000 // SR + ((b[2] >> 1) & 1)
    tagless = tmp_path / "tagless.mp3"
    tagless.write_bytes(b[first:])
    return tagged, tagless


def _onset(x):
    return int(np.argmax(np.abs(x) > 0.05))


def test_the_decoder_delay_is_kept_or_dropped_on_a_tagless_mp3_only(tmp_path):
    # FFmpeg: libsndfile estimates a tagless VBR stream's length from its first frame and stops early
    tagged, tagless = _mp3s(tmp_path)
    assert _lame_gapless(str(tagged)) is not None and _lame_gapless(str(tagless)) is None
    keep = load_2016(tagless, sr=SR, decoder="ffmpeg", mp3_delay="keep")
    drop = load_2016(tagless, sr=SR, decoder="ffmpeg", mp3_delay="drop")
    assert len(keep) == len(drop)  # the stream keeps its length: their decoder's output ended later
    assert np.array_equal(drop[:-MP3_DECODER_DELAY], keep[MP3_DECODER_DELAY:])
    # tagged: the tag trims encoder and decoder delay alike, so keep and drop are the same, at the true onset
    t_keep = load_2016(tagged, sr=SR, decoder="ffmpeg", mp3_delay="keep")
    assert np.array_equal(t_keep, load_2016(tagged, sr=SR, decoder="ffmpeg", mp3_delay="drop"))
    assert abs(_onset(t_keep) - SR // 2) < 8
    assert abs(_onset(keep) - (SR // 2 + 576 + MP3_DECODER_DELAY)) < 8  # LAME's 576 + the decoder's 529
    with pytest.raises(ValueError, match="mp3_delay"):
        load_2016(tagged, mp3_delay="trim")


def test_2016_samples_and_resampler():
    """audioread's int16 samples (clipped at full scale) and resampy's kaiser_best to 12 kHz: librosa 0.4.3's length
    ceil(n · (12000 / sr)) in floats (12,001 for one second at 44.1 kHz: 44100 · (12000 / 44100) is 12000.000000000002),
    the pitch and level kept, the band above its roll-off (0.948 of 6 kHz) removed."""
    assert np.array_equal(to_int16_grid(np.array([1.2, -1.5, 0.25], np.float32)), [32767 / 32768, -1.0, 0.25])
    t = np.arange(SR) / SR

    def levels(resampler, f2):
        """dB of the f2 tone against the 1 kHz one after resampling their sum to 12 kHz."""
        x = (0.5 * np.sin(2 * np.pi * 1000 * t) + 0.5 * np.sin(2 * np.pi * f2 * t)).astype(np.float32)
        y = resampler(x, SR, 12_000)
        seg = y[1000:-1000]
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        freqs = np.fft.rfftfreq(len(seg), 1 / 12_000)
        at = lambda f: spec[np.argmin(np.abs(freqs - f))]  # noqa: E731
        return 20 * np.log10(at(f2) / at(1000))

    tone = resample_kaiser_best_2016((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), SR, 12_000)
    assert len(tone) == int(np.ceil(SR * (12_000.0 / SR))) == 12_001
    assert np.sqrt(2 * np.mean(tone[1000:-1000] ** 2)) == pytest.approx(0.5, rel=0.005)  # the level kept
    assert levels(resample_kaiser_best_2016, 1500) == pytest.approx(0, abs=1.5)  # Hann scalloping: ±1.4 dB
    assert levels(resample_kaiser_best_2016, 5950) < -35  # above resampy's roll-off: gone
    assert levels(resample, 5950) > -10  # torchaudio's sinc (roll-off 0.99), fcn.audio's, keeps it
