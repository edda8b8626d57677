"""`rmtrain prepare stackexchange`: a Stack Exchange dump's Posts.xml -> stack-exchange-paired.

The dump is streamed (`iterparse`, elements cleared as read) into a temporary SQLite file, so
memory stays flat for dumps of many GB; questions are then read back one at a time with their
answers. Answer score = round(log2(1 + Score)), -1 when Score < 0, +1 for the accepted answer
(the stack-exchange-paired recipe); each pair of answers whose scores differ is a preference,
the better one as `response_j`, at most N pairs per question (sampled with the seed).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError
from rmtrain.outputs import atomic_writer, check_output_file


class _Markdown(HTMLParser):
    """Stack Exchange HTML bodies -> Markdown (paragraphs, code, links, lists, emphasis)."""

    INLINE = {"strong": "**", "b": "**", "em": "*", "i": "*"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.href: list[str | None] = []
        self.in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self.in_pre = True
            self.out.append("\n\n```\n")
        elif tag == "code" and not self.in_pre:
            self.out.append("`")
        elif tag in self.INLINE:
            self.out.append(self.INLINE[tag])
        elif tag == "a":
            self.href.append(dict(attrs).get("href"))
            self.out.append("[")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "br":
            self.out.append("\n")
        elif tag == "blockquote":
            self.out.append("\n\n> ")
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "img":
            a = dict(attrs)
            self.out.append(f"![{a.get('alt') or ''}]({a.get('src') or ''})")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self.in_pre = False
            ends_line = bool(self.out) and self.out[-1].endswith("\n")
            self.out.append(("" if ends_line else "\n") + "```\n\n")
        elif tag == "code" and not self.in_pre:
            self.out.append("`")
        elif tag in self.INLINE:
            self.out.append(self.INLINE[tag])
        elif tag == "a":
            href = self.href.pop() if self.href else None
            self.out.append(f"]({href})" if href else "]")
        elif tag in ("p", "ul", "ol", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.out.append(data)


def html_to_markdown(html: str) -> str:
    parser = _Markdown()
    parser.feed(html)
    parser.close()
    text = "".join(parser.out)
    lines = [line.rstrip() for line in text.splitlines()]
    collapsed = "\n".join(lines)
    while "\n\n\n" in collapsed:
        collapsed = collapsed.replace("\n\n\n", "\n\n")
    return collapsed.strip()


def answer_score(score: int, accepted: bool) -> int:
    """round(log2(1 + Score)), -1 when Score < 0, +1 for the accepted answer."""
    base = -1 if score < 0 else round(math.log2(1 + score))
    return base + (1 if accepted else 0)


@dataclass
class PrepareCounts:
    questions: int = 0
    answers: int = 0
    questions_with_pairs: int = 0
    pairs: int = 0


def _load_posts(xml_path: Path, db: sqlite3.Connection) -> PrepareCounts:
    db.execute(
        "CREATE TABLE q (id INTEGER PRIMARY KEY, title TEXT, body TEXT, date TEXT, "
        "tags TEXT, accepted INTEGER)"
    )
    db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, parent INTEGER, score INTEGER, body TEXT)")
    counts = PrepareCounts()
    root = None
    try:
        for event, elem in ET.iterparse(str(xml_path), events=("start", "end")):
            if root is None:
                root = elem  # the <posts> element: cleared as we go so memory stays flat
            if event == "end" and elem.tag == "row":
                _store_row(db, elem.attrib, counts)
                root.clear()
    except ET.ParseError as exc:
        line, col = exc.position
        raise RmtrainError(
            f"{xml_path} is not a valid Posts.xml: {exc.msg if hasattr(exc, 'msg') else exc} "
            f"(line {line}, column {col}); re-extract the dump"
        ) from None
    db.execute("CREATE INDEX a_parent ON a(parent)")
    return counts


def _store_row(db: sqlite3.Connection, row: dict[str, str], counts: PrepareCounts) -> None:
    kind = row.get("PostTypeId")
    if kind == "1":
        counts.questions += 1
        db.execute(
            "INSERT INTO q VALUES (?, ?, ?, ?, ?, ?)",
            (
                int(row["Id"]),
                row.get("Title", ""),
                row.get("Body", ""),
                row.get("CreationDate", ""),
                row.get("Tags", ""),
                int(row["AcceptedAnswerId"]) if row.get("AcceptedAnswerId") else None,
            ),
        )
    elif kind == "2" and row.get("ParentId"):
        counts.answers += 1
        db.execute(
            "INSERT INTO a VALUES (?, ?, ?, ?)",
            (int(row["Id"]), int(row["ParentId"]), int(row.get("Score", 0)), row.get("Body", "")),
        )


def _question_pairs(
    db: sqlite3.Connection, q: tuple[Any, ...], max_pairs: int, rng: random.Random
) -> list[dict[str, Any]]:
    qid, title, body, date, tags, accepted = q
    answers = db.execute("SELECT id, score, body FROM a WHERE parent = ? ORDER BY id", (qid,))
    scored = [(aid, answer_score(s, aid == accepted), b) for aid, s, b in answers.fetchall()]
    combos = [(x, y) for x, y in itertools.combinations(scored, 2) if x[1] != y[1]]
    if len(combos) > max_pairs:
        combos = rng.sample(combos, max_pairs)
    question = html_to_markdown(f"<h1>{title}</h1>{body}") if title else html_to_markdown(body)
    out = []
    for x, y in combos:
        better, worse = (x, y) if x[1] > y[1] else (y, x)
        out.append(
            {
                "qid": qid,
                "question": question,
                "date": date,
                "metadata": [tags],
                "response_j": html_to_markdown(better[2]),
                "response_k": html_to_markdown(worse[2]),
                "score_j": better[1],
                "score_k": worse[1],
            }
        )
    return out


def iter_pairs(
    xml_path: Path, max_pairs: int = 10, seed: int = 0, counts: PrepareCounts | None = None
) -> Iterator[dict[str, Any]]:
    """Stream stack-exchange-paired rows from a Posts.xml, question by question."""
    counts = counts if counts is not None else PrepareCounts()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "posts.sqlite")
        loaded = _load_posts(xml_path, db)
        counts.questions, counts.answers = loaded.questions, loaded.answers
        for q in db.execute("SELECT * FROM q ORDER BY id").fetchall():
            rows = _question_pairs(db, q, max_pairs, rng)
            counts.questions_with_pairs += bool(rows)
            counts.pairs += len(rows)
            yield from rows
        db.close()


def prepare_stackexchange(
    input_path: str, output_path: str, max_pairs: int = 10, seed: int = 0
) -> PrepareCounts:
    """Write the pairs of a Posts.xml (or a `.7z` dump holding one) as .jsonl or .parquet."""
    src = Path(input_path)
    if not src.is_file():
        raise RmtrainError(f"{src} does not exist; pass a Posts.xml or a site .7z dump")
    out = check_output_file(output_path, [input_path], overwrite=True)  # the CLI: existing files
    if out.suffix not in (".jsonl", ".parquet"):
        raise RmtrainError(f"--output {output_path}: write .jsonl or .parquet (what it writes)")
    counts = PrepareCounts()
    with _posts_xml(src) as xml:
        rows = iter_pairs(xml, max_pairs, seed, counts)
        if out.suffix == ".parquet":
            import pandas as pd

            frame = pd.DataFrame(list(rows))
            with atomic_writer(out, "wb") as fh:
                frame.to_parquet(fh)
        else:
            with atomic_writer(out) as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return counts


def dump_rows(src: Path) -> list[dict[str, Any]]:
    """A Posts.xml (or `.7z` dump) read as the rows `rmtrain prepare stackexchange` writes with
    its defaults, so a dump can be trained on without a prepared copy."""
    counts = PrepareCounts()
    with _posts_xml(src) as xml:
        rows = list(iter_pairs(xml, counts=counts))
    if not counts.questions:
        raise RmtrainError(f"{src} holds no Stack Exchange questions; pass a site's Posts.xml")
    return rows


@contextmanager
def _posts_xml(src: Path) -> Iterator[Path]:
    """The Posts.xml of a dump: the file itself, or extracted from a site `.7z` for the block."""
    if src.suffix != ".7z":
        yield src
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield _extract_7z(src, Path(tmp))


def _extract_7z(archive: Path, tmp: Path) -> Path:
    try:
        import py7zr
    except ImportError:
        raise RmtrainError("reading .7z dumps needs py7zr: pip install py7zr") from None
    with py7zr.SevenZipFile(archive) as z:
        z.extract(path=tmp, targets=["Posts.xml"])
    xml = tmp / "Posts.xml"
    if not xml.is_file():
        raise RmtrainError(f"{archive} holds no Posts.xml; pass a site dump")
    return xml
