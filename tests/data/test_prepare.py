import json

import pytest

from rmtrain.cli import main
from rmtrain.data.formats import read_pairs
from rmtrain.data.reading import load_rows
from rmtrain.data.stackexchange import answer_score, html_to_markdown, iter_pairs
from rmtrain.errors import RmtrainError
from tests.helpers import shared_data_or_skip

POSTS = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="3" CreationDate="2020-01-01T00:00:00.000"
       Score="5" Title="Why?" Body="&lt;p&gt;Tell me &lt;b&gt;why&lt;/b&gt;.&lt;/p&gt;"
       Tags="&lt;beer&gt;" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="7" Body="&lt;p&gt;Seven&lt;/p&gt;" />
  <row Id="3" PostTypeId="2" ParentId="1" Score="1" Body="&lt;p&gt;One&lt;/p&gt;" />
  <row Id="4" PostTypeId="2" ParentId="1" Score="-2" Body="&lt;p&gt;Minus&lt;/p&gt;" />
  <row Id="5" PostTypeId="1" Title="Lonely" Body="&lt;p&gt;x&lt;/p&gt;" Score="0" />
  <row Id="6" PostTypeId="2" ParentId="5" Score="3" Body="&lt;p&gt;only&lt;/p&gt;" />
</posts>
"""


def test_answer_score_rule():
    # round(log2(1 + 7)) = 3; round(log2(2)) = 1, +1 accepted = 2; negative -> -1
    assert (answer_score(7, False), answer_score(1, True), answer_score(-2, False)) == (3, 2, -1)
    # an accepted answer with a negative score: -1 + 1 = 0; with score 0: log2(1) + 1 = 1
    assert (answer_score(-3, True), answer_score(0, True), answer_score(0, False)) == (0, 1, 0)
    assert answer_score(0, False) == 0


def test_pairs_from_a_tiny_dump(tmp_path):
    xml = tmp_path / "Posts.xml"
    xml.write_text(POSTS)
    rows = list(iter_pairs(xml))
    # scores 3, 2, -1 all differ -> 3 pairs; question 5 has a single answer -> none
    assert [(r["response_j"], r["response_k"]) for r in rows] == [
        ("Seven", "One"),
        ("Seven", "Minus"),
        ("One", "Minus"),
    ]
    assert rows[0]["question"] == "# Why?\n\nTell me **why**."
    assert (rows[0]["score_j"], rows[0]["score_k"], rows[0]["qid"]) == (3, 2, 1)
    # at most 2 pairs per question: a seeded draw of 2 of its 3 pairs, the same every time
    two = list(iter_pairs(xml, max_pairs=2))
    assert len(two) == 2 and all(r in rows for r in two) and two[0] != two[1]
    assert two == list(iter_pairs(xml, max_pairs=2))


def test_html_to_markdown():
    html = (
        '<p>See <a href="http://x.org">this</a>:</p>'
        "<pre><code>a = 1\n</code></pre><ul><li>one</li></ul>"
    )
    assert html_to_markdown(html) == "See [this](http://x.org):\n\n```\na = 1\n```\n\n- one"


def test_malformed_dump_names_the_line(tmp_path):
    xml = tmp_path / "Posts.xml"
    xml.write_text("<posts>\n<row Id='1' PostTypeId='1'\n</posts>")
    with pytest.raises(RmtrainError, match="line 3"):
        list(iter_pairs(xml))


def test_beer_dump_converts_to_the_published_count(tmp_path, capsys):
    data = shared_data_or_skip()
    out = tmp_path / "beer.jsonl"
    xml = data / "stackexchange" / "beer.stackexchange.com-Posts.xml"
    assert main(["prepare", "stackexchange", "--input", str(xml), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1267 and len({r["qid"] for r in rows}) == 384
    assert all(r["score_j"] > r["score_k"] for r in rows)
    assert "1267 pairs from 384 questions" in capsys.readouterr().out


def test_a_dump_is_read_as_the_rows_prepare_writes(tmp_path):
    xml = tmp_path / "beer.stackexchange.com-Posts.xml"
    xml.write_text(POSTS)
    out = tmp_path / "pairs.jsonl"
    assert main(["prepare", "stackexchange", "--input", str(xml), "--output", str(out)]) == 0
    prepared = [json.loads(line) for line in out.read_text().splitlines()]
    rows = load_rows(str(xml))
    assert list(rows) == prepared and len(prepared) == 3
    pairs, counts = read_pairs(rows, 1.0, 0)
    assert sorted((p.chosen, p.rejected) for p in pairs) == [
        ("One", "Minus"),
        ("Seven", "Minus"),
        ("Seven", "One"),
    ]
    assert counts.rows_read == 3 and not counts.malformed


def test_a_file_that_is_not_a_dump_names_the_file(tmp_path):
    xml = tmp_path / "notes.xml"
    xml.write_text("<notes><note>hi</note>\n<broken")
    with pytest.raises(RmtrainError, match="notes.xml.*line 2"):
        load_rows(str(xml))
    xml.write_text("<notes><note>hi</note></notes>")
    with pytest.raises(RmtrainError, match="notes.xml holds no Stack Exchange questions"):
        load_rows(str(xml))
