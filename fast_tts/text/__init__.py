"""Text frontend: language detection, wetext normalization, long-text splitting, control tags, TTS clean-up."""

from fast_tts.text.clean import clean_for_tts
from fast_tts.text.language import detect_language
from fast_tts.text.normalize import get_normalizer, normalize
from fast_tts.text.split import split_sentences, split_text, text_length
from fast_tts.text.tags import TAG_RE, split_tags, strip_tags

__all__ = [
    "TAG_RE",
    "clean_for_tts",
    "detect_language",
    "get_normalizer",
    "normalize",
    "split_sentences",
    "split_tags",
    "split_text",
    "strip_tags",
    "text_length",
]
