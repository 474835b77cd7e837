"""Mandarin intelligibility per voice: the character error rate Whisper base hears, over 28 sentences.

The sentences: the six of tests/test_zh_intelligibility.py (numbers, dates, times, money), ten more with numbers
(prices, a phone number, temperatures, page counts) and twelve everyday ones. Each is spoken by AsyncKokoroEngine
with the named voice (normalised as the engine does), resampled to 16 kHz and transcribed by multilingual Whisper
base (int8, beam 5, told the language is Chinese); both sides are compared as in tests/asr.py. Some errors are
Whisper's own writing rather than the voice's (它 for 她, 著 for 着, a phone number written as one large number):
they count, so the figures compare voices, not an absolute floor. Needs `pip install -e '.[zh,test]'`.

    python benchmarks/mandarin_cer.py [--voices zf_xiaobei jm_kumo ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from asr import DATES_AND_NUMBERS, edits, hanzi, transcribe, whisper_base

from fast_tts.audio import resample, to_float32

MORE_NUMBERS = [
    "火车将于晚上8点45分到达上海。",
    "这件衣服打八折以后是256元。",
    "她的电话号码是13812345678。",
    "2023年的销售额增长了百分之十五。",
    "明天的最高气温是28度，有小雨。",
    "我的生日是1998年12月25日。",
    "这本书一共有368页，我读了一半。",
    "请在周五之前把报告发给我。",
    "飞机晚点了两个小时，大家都很着急。",
    "图书馆每天早上九点开门，晚上十点关门。",
]
EVERYDAY = [
    "这家餐厅的服务很好，菜也很好吃。",
    "孩子们在操场上踢足球，玩得很开心。",
    "医生建议他每天多喝水，早点睡觉。",
    "我们公司去年招聘了350名新员工。",
    "这条河的长度大约是6300公里。",
    "下周三上午10点，我们在三楼会议室见面。",
    "他用了三年时间写完了这本小说。",
    "春天来了，公园里的花都开了。",
    "请把窗户关上，外面风太大了。",
    "这台电脑的价格是4999元。",
    "我们班一共有42个学生，其中女生有20个。",
    "周末我打算去超市买些水果和蔬菜。",
]
SETS = {"test six": DATES_AND_NUMBERS, "more numbers": MORE_NUMBERS, "everyday": EVERYDAY}


async def measure(voices: list[str] | None) -> dict[str, dict[str, list[int]]]:
    """voice -> set name -> [errors, characters], printing each misheard sentence as it goes."""
    from fast_tts.engine.kokoro import AsyncKokoroEngine

    engine = AsyncKokoroEngine()
    with tempfile.TemporaryDirectory() as folder:
        whisper = whisper_base(Path(folder))
    results: dict[str, dict[str, list[int]]] = {}
    try:
        for voice in voices or engine.list_speakers():
            results[voice] = {}
            for name, sentences in SETS.items():
                errors = characters = 0
                for text in sentences:
                    audio = await engine.speak_async(text, voice)
                    heard = transcribe(whisper, resample(to_float32(audio), engine.sample_rate, 16000), "zh")
                    wrong = edits(hanzi(text), hanzi(heard))
                    errors, characters = errors + wrong, characters + len(hanzi(text))
                    if wrong:
                        print(f"  {voice}: {text} -> {heard}", flush=True)
                results[voice][name] = [errors, characters]
            row = results[voice]
            total = [sum(v[0] for v in row.values()), sum(v[1] for v in row.values())]
            cells = "  ".join(f"{n} {e}/{c} = {e / c:.1%}" for n, (e, c) in [*row.items(), ("all", total)])
            print(f"{voice:14s} {cells}", flush=True)
    finally:
        await engine.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", help="voices to measure (default: every Kokoro voice)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(measure(args.voices))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
