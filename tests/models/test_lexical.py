"""The lexical index on ICU analysis and BM25 matrices: analysis, BM25 against a hand computation, writes, filters,
the journal a restart reads back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from xling.models.files import claim_folder
from xling.models.index import lexical as lexical_module
from xling.models.index.analysis import terms, words
from xling.models.index.lexical import JOURNAL_FILE, LexicalDoc, LexicalIndex, partition_of
from xling.models.index.lexical_ranking import best_first


def _bm25(tf: int, doc_len: int, avg_len: float, docs: int, docs_with_term: int) -> float:
    """Okapi BM25 with tantivy's constants (k1 1.2, b 0.75) and its idf, ln(1 + (N - n + 0.5) / (n + 0.5))."""
    idf = math.log(1 + (docs - docs_with_term + 0.5) / (docs_with_term + 0.5))
    return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * doc_len / avg_len))


def test_thai_and_chinese_are_segmented_into_words() -> None:
    assert words("ผมชื่อสมชาย") == ["ผม", "ชื่อ", "สมชาย"]
    assert words("我们在北京大学学习中文。") == ["我们", "在", "北京", "大学", "学习", "中文"]
    # Spaces and punctuation go; case and compatibility forms fold; numbers stay whole.
    assert words("Die STRASSE, ＡＢＣ 3.14!") == ["die", "strasse", "abc", "3.14"]


def test_stemming_only_where_the_language_has_a_stemmer() -> None:
    assert terms("Running dogs", "en") == ["run", "dog"]
    assert terms("Running dogs", "pt-BR") == terms("Running dogs", "pt")  # a region uses its language's stemmer
    assert terms("Running dogs", "kzj") == ["running", "dogs"]  # none for Coastal Kadazan: words as written


def test_bm25_matches_a_hand_computation_with_statistics_per_language(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path)
    index.upsert([
        LexicalDoc("a", "river bank money", "kzj"),
        LexicalDoc("b", "river fish", "kzj"),
        LexicalDoc("c", "mountain snow lake cold", "kzj"),
        # 'river' is in every one of these: in their partition it is worth little, in kzj's it keeps its weight.
        LexicalDoc("x", "river river", "sw"),
        LexicalDoc("y", "river", "sw"),
    ])
    index.commit("1-0")
    found = {hit.ext_id: hit.score for hit in index.search("river", 10)}
    avg = (3 + 2 + 4) / 3
    assert found["a"] == pytest.approx(_bm25(1, 3, avg, 3, 2), rel=1e-5)
    assert found["b"] == pytest.approx(_bm25(1, 2, avg, 3, 2), rel=1e-5)
    assert found["x"] == pytest.approx(_bm25(2, 2, 1.5, 2, 2), rel=1e-5)
    assert found["y"] == pytest.approx(_bm25(1, 1, 1.5, 2, 2), rel=1e-5)
    assert [hit.ext_id for hit in index.search("river", 10)][:2] == ["b", "a"]
    assert set(found) == {"a", "b", "x", "y"}  # 'c' has no query term: not a hit at all
    found_a = index.scores("river money", ["a", "c", "gone"])
    assert list(found_a) == ["a"] and found_a["a"].partition == "kzj"
    assert found_a["a"].score == pytest.approx(_bm25(1, 3, avg, 3, 2) + _bm25(1, 3, avg, 3, 1), rel=1e-5)
    # Scaled for fusion: by the best over all documents, or by the best in each document's language.
    overall = index.scaled("river", None, None, per_language=False)
    assert dict(overall.top(10)) == pytest.approx({i: s / max(found.values()) for i, s in found.items()})
    per_language = index.scaled("river", None, None, per_language=True)
    best = {"kzj": max(found["a"], found["b"]), "sw": max(found["x"], found["y"])}
    expected = {i: s / best["kzj" if i in "ab" else "sw"] for i, s in found.items()}
    assert dict(per_language.top(10)) == pytest.approx(expected)
    assert per_language.of(["a", "y", "c"]) == pytest.approx({"a": expected["a"], "y": expected["y"]})
    assert [i for i, _ in per_language.top(2)] == ["b", "x"]  # each language's best first, then the rest


def test_replace_and_delete_never_return_the_old_text(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path)
    index.upsert([LexicalDoc("doc", "the old harbour crane", "en"), LexicalDoc("other", "a quiet harbour", "en")])
    index.commit("1-0")
    index.upsert([LexicalDoc("doc", "der neue Kran im Hafen", "de")])  # a new text in another language's partition
    index.commit("2-0")
    assert "doc" not in [hit.ext_id for hit in index.search("old crane", 10)]
    assert [hit.ext_id for hit in index.search("Kran", 10)] == ["doc"]
    assert index.partitions == {"de": 1, "en": 1}
    index.remove(["doc"])
    index.commit("3-0")
    assert index.search("Kran", 10) == [] and len(index) == 1


def test_filters_restrict_to_declared_languages_and_metadata(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path)
    index.upsert([
        LexicalDoc("en1", "solar panel prices", "en", {"year": 2024}),
        LexicalDoc("en2", "solar eclipse", "en", {"year": 2023}),
        LexicalDoc("gb", "solar farm", "en-GB", {"year": 2024}),
        LexicalDoc("none", "solar power everywhere", None),  # detected as English, declared as nothing
    ])
    index.commit("1-0")
    assert {hit.ext_id for hit in index.search("solar", 10)} == {"en1", "en2", "gb", "none"}
    assert {hit.ext_id for hit in index.search("solar", 10, langs=["en"])} == {"en1", "en2"}
    assert {hit.ext_id for hit in index.search("solar", 10, langs=["en-GB"])} == {"gb"}
    assert {hit.ext_id for hit in index.search("solar", 10, where={"year": 2024})} == {"en1", "gb"}
    assert {hit.ext_id for hit in index.search("solar", 10, langs=["en"], where={"year": 2024})} == {"en1"}
    # The filter does not change a score: BM25 is the same with and without it.
    unfiltered = {hit.ext_id: hit.score for hit in index.search("solar", 10)}
    filtered = {hit.ext_id: hit.score for hit in index.search("solar", 10, langs=["en"])}
    assert filtered == {ext_id: pytest.approx(unfiltered[ext_id]) for ext_id in ("en1", "en2")}


def test_reopening_keeps_documents_and_offset_and_folders_are_claimed_per_process(tmp_path: Path) -> None:
    first, claim = claim_folder(tmp_path)
    second, other_claim = claim_folder(tmp_path)
    assert first != second
    index = LexicalIndex(first)
    assert index.applied_offset is None
    index.upsert([LexicalDoc("a", "eine kleine Nachtmusik", "de")])
    index.commit("5-1")
    index.close()
    claim.close()
    again, claim = claim_folder(tmp_path)
    assert again == first  # released: the next process takes it back, with what it holds
    reopened = LexicalIndex(again)
    assert reopened.applied_offset == "5-1" and [h.ext_id for h in reopened.search("Nachtmusik", 3)] == ["a"]
    claim.close()
    other_claim.close()


@pytest.mark.parametrize(("text", "lang"), [
    ("Wo ist der nächste Bahnhof, bitte?", "de"),
    ("Où se trouve la gare la plus proche ?", "fr"),
    ("¿Dónde está la estación de tren más cercana?", "es"),
    ("Где находится ближайший вокзал?", "ru"),
    ("最近的火车站在哪里？", "zh"),
    ("สถานีรถไฟที่ใกล้ที่สุดอยู่ที่ไหน", "th"),
    ("Where is the nearest railway station?", "en"),
])
def test_a_document_without_a_language_goes_to_the_detected_languages_partition(text: str, lang: str) -> None:
    assert partition_of(LexicalDoc("x", text, None)) == lang
    assert partition_of(LexicalDoc("x", text, "pt-BR")) == "pt"  # a declared language wins, by its base


def test_a_batch_answers_each_query_as_it_would_alone(tmp_path: Path) -> None:
    """One sparse product per partition for a batch: each query's partition tops and candidate scores are those
    it gets alone, under a filter too."""
    index = LexicalIndex(tmp_path)
    docs = [LexicalDoc(f"{lang}{i}", text, lang, {"n": i % 2})
            for lang, sentences in (("en", ["the river bank", "a bank loan", "river fish swim", "fish market"]),
                                    ("de", ["der Fluss", "die Bank am Fluss", "Fische im Fluss"]))
            for i, text in enumerate(sentences)]
    index.upsert(docs)
    index.commit("1-0")
    texts = ["river bank", "Fluss Bank", "fish", "nothing matches here"]
    everyone = [doc.ext_id for doc in docs] + ["unknown"]
    for langs, where in ((None, None), (["de"], None), (None, {"n": 1})):
        answers = index.answer_many(texts, 2, langs, where, [everyone] * len(texts))
        for text, answer in zip(texts, answers, strict=True):
            tops = {name: best_first(found.hits(name)) for name, found in answer.tops.items()}
            assert tops == index.per_partition(text, 2, langs, where)
            assert all(list(found.scores) == sorted(found.scores, reverse=True) for found in answer.tops.values())
            known = {hit.ext_id: hit for name, found in answer.known.items() for hit in found.hits(name)}
            assert known == index.scores(text, everyone)
            assert answer.asked == frozenset(everyone)
    assert index.answer_many(["fish"], 3, None, None, [[]])[0].tops["en"].ids[0] in {"en2", "en3"}
    assert index.scores("nothing matches here", everyone) == {}


def test_statistics_count_only_live_documents_through_replacements_and_compaction(tmp_path: Path) -> None:
    """A document replaced 1,500 times leaves dead rows behind, which the partition drops once they outnumber the
    live ones: the scores stay those of an index that only ever held the live documents."""
    churned = LexicalIndex(tmp_path / "churned")
    churned.upsert([LexicalDoc("keep", "salmon river", "en"), LexicalDoc("other", "trout lake stream", "en")])
    for round_ in range(1_500):
        churned.upsert([LexicalDoc("moving", f"salmon salmon run {round_ % 7}", "en")])
    churned.commit("2-0")
    fresh = LexicalIndex(tmp_path / "fresh")
    fresh.upsert([LexicalDoc("keep", "salmon river", "en"), LexicalDoc("other", "trout lake stream", "en"),
                  LexicalDoc("moving", f"salmon salmon run {1_499 % 7}", "en")])
    fresh.commit("2-0")
    assert len(churned) == 3 and churned.partitions == {"en": 3}
    for query in ("salmon", "river run", "trout"):
        ours = {hit.ext_id: hit.score for hit in churned.search(query, 10)}
        assert ours == pytest.approx({hit.ext_id: hit.score for hit in fresh.search(query, 10)}), query


def test_words_only_dead_documents_held_leave_the_vocabulary_at_compaction(tmp_path: Path) -> None:
    """A document replaced over and over with new words (a log line, a price): the vocabulary keeps the words of
    the live documents, not every word ever written, so memory follows the corpus rather than the writes."""
    churned = LexicalIndex(tmp_path / "churned")
    churned.upsert([LexicalDoc("keep", "salmon river", "en")])
    for round_ in range(3_000):
        churned.upsert([LexicalDoc("moving", f"reading{round_} at gauge{round_}", "en")])
        if round_ % 500 == 499:
            churned.search("salmon", 1)  # a search builds the partition, which compacts once dead rows dominate
    churned.search("salmon", 1)
    vocabulary = churned._parts["en"].vocabulary
    # 6,002 words were written; the vocabulary holds those of under 1,100 rows written since the last compaction
    assert len(vocabulary) < 1_200, len(vocabulary)
    assert {"salmon", "river", "reading2999", "gauge2999"} <= set(vocabulary)
    assert [hit.ext_id for hit in churned.search("gauge2999", 5)] == ["moving"]
    assert [hit.ext_id for hit in churned.search("salmon river", 5)] == ["keep"]
    assert churned.search("reading10", 5) == []


def test_the_journal_survives_a_torn_line_and_is_rewritten_when_mostly_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical_module, "COMPACT_SLACK", 5)
    index = LexicalIndex(tmp_path)
    index.upsert([LexicalDoc("a", "harbour crane", "en", {"dock": 4}), LexicalDoc("b", "Hafen Kran", "de")])
    index.commit("1-0")
    for n in range(20):  # every commit replaces "a": the journal fills with dead copies
        index.upsert([LexicalDoc("a", f"harbour crane number {n}", "en", {"dock": 4})])
        index.commit(f"{n + 2}-0")
    index.remove(["b"])
    index.commit("30-0")
    journal = tmp_path / JOURNAL_FILE
    lines = journal.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 12  # rewritten (at least once) as the live documents alone
    expected = index.search("number 19", 5)
    index.upsert([LexicalDoc("c", "a third document", "en")])  # written, never committed
    index.close()
    with journal.open("a", encoding="utf-8") as out:
        out.write('{"ops": [["+", "torn"')  # a line cut short by a crash
    reopened = LexicalIndex(tmp_path)
    assert reopened.applied_offset == "30-0" and len(reopened) == 1
    assert [hit.ext_id for hit in reopened.search("crane", 5, where={"dock": 4})] == ["a"]
    assert reopened.search("number 19", 5) == expected
    assert journal.read_text(encoding="utf-8").endswith("\n")  # the torn line was cut off
    reopened.upsert([LexicalDoc("d", "written after the tear", "en")])
    reopened.commit("31-0")
    assert LexicalIndex(tmp_path).applied_offset == "31-0" and len(LexicalIndex(tmp_path)) == 2
