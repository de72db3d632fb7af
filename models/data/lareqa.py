"""LAReQA evaluation data: every sentence of every paragraph in every language a candidate, each question's
answer-bearing sentences (one per language holding its id) its relevant candidates. The metrics are in
`xling.models.evaluation.lareqa`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xling.models.data.parallel import ParallelGroup, load_parallel
from xling.models.data.text import LANG_FILE, DataError, read_json_file


@dataclass
class LareqaData:
    languages: list[str]
    candidate_texts: list[str]
    candidate_langs: np.ndarray  # (N,) index into languages
    question_ids: list[str]
    question_texts: list[str]
    question_langs: np.ndarray  # (Q,) index into languages
    relevant: np.ndarray  # (Q, L) candidate index of the answer in each language, -1 if none

    @property
    def size(self) -> str:
        questions, candidates = len(self.question_texts), len(self.candidate_texts)
        return f"{questions} questions, {candidates} candidates, {len(self.languages)} languages"


def lareqa_from_groups(groups: list[ParallelGroup], langs: list[str] | None = None) -> LareqaData:
    """LAReQA data from parallel QA groups: every group's passage in every language is a candidate, and each
    query's relevant candidates are its group's passages. (LAReQA folders add every other sentence of the
    answer's paragraph as a candidate, so the same model scores lower there.)"""
    found = sorted({lang for g in groups for lang in (*g.queries, *g.passages)})
    if langs:
        unknown = sorted(set(langs) - set(found))
        if unknown:
            raise DataError(f"no groups in languages {unknown} (has {found})")
    languages = sorted(langs) if langs else found
    position = {lang: li for li, lang in enumerate(languages)}
    cand_texts: list[str] = []
    cand_langs: list[int] = []
    answer_of: dict[tuple[str, int], int] = {}
    for group in groups:
        for lang, text in group.passages.items():
            if lang in position:
                answer_of[(group.id, position[lang])] = len(cand_texts)
                cand_texts.append(text)
                cand_langs.append(position[lang])
    questions = [(g.id, position[lang], text) for g in groups for lang, text in g.queries.items() if lang in position]
    return _lareqa_data(languages, cand_texts, cand_langs, questions, answer_of)


def _lareqa_data(
    languages: list[str],
    cand_texts: list[str],
    cand_langs: list[int],
    questions: list[tuple[str, int, str]],
    answer_of: dict[tuple[str, int], int],
) -> LareqaData:
    relevant = np.full((len(questions), len(languages)), -1, dtype=np.int64)
    for qi, (qid, _, _) in enumerate(questions):
        for li in range(len(languages)):
            relevant[qi, li] = answer_of.get((qid, li), -1)
    return LareqaData(
        languages=languages,
        candidate_texts=cand_texts,
        candidate_langs=np.array(cand_langs, dtype=np.int64),
        question_ids=[q[0] for q in questions],
        question_texts=[q[2] for q in questions],
        question_langs=np.array([q[1] for q in questions], dtype=np.int64),
        relevant=relevant,
    )


def load_lareqa(folder: Path, langs: list[str] | None = None) -> LareqaData:
    """Read `<lang>.json` files (SQuAD layout with `sentence_breaks`), or parallel QA groups in JSONL
    (see `lareqa_from_groups`); `langs` restricts the languages."""
    if folder.is_file() or (not list(folder.glob("*.json")) and list(folder.glob("*.jsonl"))):
        return lareqa_from_groups(load_parallel(folder)[0], langs)
    files = {p.stem: p for p in sorted(folder.glob("*.json")) if LANG_FILE.match(p.stem)}
    if not files:
        raise DataError(f"{folder}: no <lang>.json files")
    if langs:
        unknown = sorted(set(langs) - set(files))
        if unknown:
            raise DataError(f"{folder}: no file for languages {unknown} (has {sorted(files)})")
        files = {lang: files[lang] for lang in langs}
    languages = sorted(files)
    cand_texts: list[str] = []
    cand_langs: list[int] = []
    questions: list[tuple[str, int, str]] = []
    answer_of: dict[tuple[str, int], int] = {}
    for li, lang in enumerate(languages):
        document = read_json_file(files[lang])
        articles = document.get("data") if isinstance(document, dict) else None
        if not isinstance(articles, list):
            raise DataError(f"{files[lang]}: expected an object with a 'data' list (SQuAD layout)")
        try:
            for article in articles:
                for paragraph in article["paragraphs"]:
                    first = len(cand_texts)
                    context = paragraph["context"]
                    spans = paragraph["sentence_breaks"]
                    for start, end in spans:
                        cand_texts.append(context[start:end].strip())
                        cand_langs.append(li)
                    for qa in paragraph["qas"]:
                        answer_start = int(qa["answers"][0]["answer_start"])
                        hit = next((i for i, (s, e) in enumerate(spans) if s <= answer_start < e), None)
                        if hit is None:
                            continue  # no sentence holds the answer: the question cannot be scored
                        questions.append((str(qa["id"]), li, str(qa["question"]).strip()))
                        answer_of[(str(qa["id"]), li)] = first + hit
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # Uploads are checked field by field (models.data); this names the file for anything else.
            raise DataError(f"{files[lang]}: not in SQuAD layout ({type(exc).__name__}: {exc})") from None
    return _lareqa_data(languages, cand_texts, cand_langs, questions, answer_of)
