"""Audio I/O for fast_tts: formats, whole and streaming encoders, reading, resampling and crossfades."""

from fast_tts.audio.convert import as_mono, resample, to_float32, to_int16
from fast_tts.audio.crossfade import WINDOWS, Crossfader, JoinRule, crossfade_join
from fast_tts.audio.encode import StreamEncoder, encode, wav_header
from fast_tts.audio.files import read_audio, write_audio
from fast_tts.audio.formats import FORMATS, MEDIA_TYPES, check_format, format_from_path

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "WINDOWS",
    "Crossfader",
    "JoinRule",
    "StreamEncoder",
    "as_mono",
    "check_format",
    "crossfade_join",
    "encode",
    "format_from_path",
    "read_audio",
    "resample",
    "to_float32",
    "to_int16",
    "wav_header",
    "write_audio",
]
