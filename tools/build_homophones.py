"""Build the ChatTTS homophone map (a JSON {char: char} object) from a tokenizer vocabulary, OpenCC and pypinyin.

Why: ChatTTS reads characters its tokenizer lacks as [UNK], and reads rare or traditional forms badly. The map
rewrites such characters, before tokenization, into a common in-vocabulary character that sounds the same.

Method, for every ideograph of the Basic Multilingual Plane (U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF):
1. form = the NFKC form of the character when that is another single ideograph (compatibility ideographs).
2. simplified = OpenCC "t2s" of form. If it differs from the character, is in the vocabulary, and its pinyin
   readings include the character's main reading, map the character to it (traditional -> simplified; the
   reading check keeps pairs such as 乾/干 apart, whose sounds differ). This applies even to characters the
   vocabulary has, since the model was trained on simplified Mandarin. Else the same for form itself. Targets
   are always in U+4E00-9FFF, the only ideographs the normalizer keeps.
3. Otherwise, a character missing from the vocabulary maps to the most frequent in-vocabulary simplified
   character (one OpenCC t2s leaves unchanged) whose main pinyin reading, with tone, equals the character's main
   reading. Main reading = pypinyin's first reading of the single character. Frequency = the sum of jieba's
   dictionary word frequencies over the words containing the character; ties go to the lower code point.
4. Characters with no pinyin reading, or no in-vocabulary homophone, stay unmapped.

The vocabulary is a `vocab.txt` (one token per line) or a `tokenizer.json` (WordPiece/BPE `model.vocab` plus
`added_tokens`); only its single-ideograph tokens count. fast_tts/models/chattts/data/homophones.json is built
against bert-base-chinese `vocab.txt`, the vocabulary of ChatTTS's tokenizer (21128 tokens, 7322 single
ideographs; sha256 45080377ab16e88f0b507f408bed27c999742143f720cf0263ebb5a5225257c2), giving 20988 pairs
(2397 variant, 18591 homophone) with opencc 1.4.2, pypinyin 0.55.0 and jieba 0.42.1:

    pip install opencc pypinyin jieba
    python tools/build_homophones.py --vocab bert-base-chinese/vocab.txt \
        --out fast_tts/models/chattts/data/homophones.json
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections import Counter
from importlib import metadata
from pathlib import Path

IDEOGRAPH_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))


def is_ideograph(char: str) -> bool:
    """True for one character inside IDEOGRAPH_RANGES."""
    return len(char) == 1 and any(lo <= ord(char) <= hi for lo, hi in IDEOGRAPH_RANGES)


def read_vocab_chars(path: Path) -> set[str]:
    """Single-ideograph tokens of a vocab.txt or tokenizer.json."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        tokens = list(data["model"]["vocab"]) + [t["content"] for t in data.get("added_tokens", [])]
    else:
        tokens = path.read_text(encoding="utf-8").splitlines()
    return {t for t in tokens if is_ideograph(t)}


def char_frequencies() -> Counter[str]:
    """Character frequencies summed from jieba's word dictionary (word, count, tag per line)."""
    import jieba

    freq: Counter[str] = Counter()
    with open(Path(jieba.__file__).with_name("dict.txt"), encoding="utf-8") as f:
        for line in f:
            word, count = line.split()[:2]
            for char in word:
                freq[char] += int(count)
    return freq


def readings(char: str) -> list[str]:
    """pypinyin readings of one character with tone digits, the main one first; [] when it has none."""
    from pypinyin import Style, pinyin

    result = pinyin(char, style=Style.TONE3, heteronym=True, errors="ignore")
    return result[0] if result else []


def build_map(vocab: set[str]) -> tuple[dict[str, str], Counter[str]]:
    """The homophone map for `vocab` by the method in the module docstring, and a count of pairs per rule."""
    import opencc

    t2s = opencc.OpenCC("t2s").convert
    freq = char_frequencies()

    best: dict[str, str] = {}
    for char in sorted(vocab, key=lambda c: (-freq[c], ord(c))):
        main = readings(char)[:1]
        if "\u4e00" <= char <= "\u9fff" and main and t2s(char) == char:
            best.setdefault(main[0], char)

    pairs: dict[str, str] = {}
    rules: Counter[str] = Counter()
    for lo, hi in IDEOGRAPH_RANGES:
        for code in range(lo, hi + 1):
            char = chr(code)
            nfkc = unicodedata.normalize("NFKC", char)
            form = nfkc if is_ideograph(nfkc) else char
            main = (readings(char) or readings(form))[:1]
            if not main:
                continue
            simplified = t2s(form)
            variant = next(
                (
                    c
                    for c in (simplified, form)
                    if c != char and c in vocab and "\u4e00" <= c <= "\u9fff" and main[0] in readings(c)
                ),
                None,
            )
            if variant is not None:
                pairs[char] = variant
                rules["variant"] += 1
            elif char not in vocab and best.get(main[0], char) != char:
                pairs[char] = best[main[0]]
                rules["homophone"] += 1
    return pairs, rules


def main(argv: list[str] | None = None) -> int:
    """Command line: build the map for --vocab and write it to --out as sorted JSON, one pair a line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=Path, required=True, help="vocab.txt or tokenizer.json")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON map")
    args = parser.parse_args(argv)
    vocab = read_vocab_chars(args.vocab)
    if not vocab:
        parser.error(f"{args.vocab} has no single-ideograph tokens")
    pairs, rules = build_map(vocab)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(sorted(pairs.items())), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("opencc", "pypinyin", "jieba"))
    print(
        f"{len(pairs)} pairs ({rules['variant']} variant, {rules['homophone']} homophone) for {len(vocab)} "
        f"vocabulary ideographs -> {args.out} [{versions}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
