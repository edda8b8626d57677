"""`rmtrain score`: a JSONL file in, the same lines out with rewards, streamed.

Output line N answers input line N, always (blank, undecodable and malformed lines get an
`error`), the output is strict JSON, and it appears only when complete.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError
from rmtrain.outputs import atomic_writer, check_output_file
from rmtrain.serving.scorer import Progress, RewardScorer, score_records


@dataclass
class ScoreCounts:
    rows: int = 0
    scored: int = 0
    truncated: int = 0
    errors: int = 0


RESULT_KEYS = ("reward", "truncated", "error")


def _decode_line(raw: bytes, first: bool) -> str | None:
    """A line's text (a UTF-8 BOM on the first line dropped); None when not UTF-8."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError:
        return None


def _echo(row: Any) -> dict[str, Any]:
    """The input row as output: a non-object under `input`; keys rmtrain writes (reward,
    truncated, error) kept as `input_<key>` so that each output field has one meaning."""
    if not isinstance(row, dict):
        return {"input": row}
    return {(f"input_{k}" if k in RESULT_KEYS else k): v for k, v in row.items()}


def _score_chunk(
    scorer: RewardScorer, lines: list[tuple[bytes, bool]], normalize: bool
) -> list[dict[str, Any]]:
    """One output record per input line, in order: the input plus `reward`/`truncated`, or
    plus `error` (blank, not UTF-8, not JSON, not scorable, non-finite reward)."""
    out: list[dict[str, Any]] = []
    rows, where = [], []
    for raw, first in lines:
        text = _decode_line(raw, first)
        if text is None:
            out.append(
                {
                    "input": raw.decode("utf-8", "replace").rstrip("\r\n"),
                    "error": "line is not valid UTF-8",
                }
            )
            continue
        if not text.strip():
            out.append({"error": "blank line"})
            continue
        try:
            row = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            out.append({"input": text.rstrip("\r\n"), "error": f"invalid JSON: {msg}"})
            continue
        out.append(_echo(row))
        rows.append(row)
        where.append(len(out) - 1)
    for w, result in zip(where, score_records(scorer, rows, normalize), strict=True):
        if "reward" in result and not math.isfinite(result["reward"]):
            result = {"reward": None, "error": "the model gave a non-finite reward"}
        out[w] = {**out[w], **result}
    return out


def _chunks(lines: Any, size: int) -> Any:
    """(line bytes, is first line) in lists of `size`; every line, blank ones included."""
    buf: list[tuple[bytes, bool]] = []
    for i, line in enumerate(lines):
        buf.append((line, i == 0))
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _strict_json(value: Any) -> Any:
    """Non-finite numbers (read from NaN / Infinity in the input) as null: strict JSON out."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def _json_line(row: dict[str, Any]) -> str:
    """Strict JSON; an echoed unpaired surrogate is written escaped (\\ud800), as JSON allows."""
    line = json.dumps(_strict_json(row), ensure_ascii=False, allow_nan=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(_strict_json(row), allow_nan=False)
    return line + "\n"


def score_file(
    scorer: RewardScorer,
    input_path: str,
    output_path: str,
    chunk: int = 256,
    normalize: bool = False,
    progress: Progress | None = None,
) -> ScoreCounts:
    """Stream JSONL in and out (constant memory), `chunk` rows at a time: output line N
    answers input line N. The output appears only when complete (written beside, renamed)."""
    src = Path(input_path)
    if not src.is_file():
        raise RmtrainError(f"input {input_path} does not exist; pass a .jsonl file")
    out = check_output_file(
        output_path, [input_path], overwrite=True
    )  # the CLI decides on existing files
    counts = ScoreCounts()
    opener = gzip.open if src.suffix == ".gz" else open  # .jsonl.gz as train and eval read it
    with opener(src, "rb") as fin, atomic_writer(out) as fout:
        for lines in _chunks(fin, chunk):
            for row in _score_chunk(scorer, lines, normalize):
                counts.rows += 1
                counts.errors += "error" in row
                counts.scored += "error" not in row
                counts.truncated += bool(row.get("truncated"))
                fout.write(_json_line(row))
            if progress:
                progress(len(lines))
    return counts
