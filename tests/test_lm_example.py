"""The language-model example (``python -m trak_core.examples.lm_canary``): its corpus and
tokenizer, and the quick run end to end with its known answer (the canary ranks first)."""

import dataclasses
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from trak_core.examples import lm_canary
from trak_core.examples.lm_canary import QUICK, format_report, parse_args, rank_of
from trak_core.examples.lm_corpus import (
    CANARY,
    CANARY_QUERY,
    Vocabulary,
    documents,
    lm_batches,
    python_docs_corpus,
    tokenize,
)
from trak_core.lm_task import IGNORE_INDEX

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


def test_corpus_is_deterministic_with_the_canary_planted_once():
    corpus = python_docs_corpus(limit=QUICK.limit)
    assert corpus == python_docs_corpus(limit=QUICK.limit)
    assert len(corpus.train) >= 500  # the target's "among >= 500 training documents", in quick mode too
    assert corpus.train.count(CANARY) == 1 and corpus.train[corpus.canary_index] == CANARY
    assert not set(corpus.held_out) & set(corpus.train)  # held-out texts are never trained on
    for doc in corpus.train:
        assert 16 <= len(tokenize(doc)) <= 48, doc
    # The canary's subject is invented: none of its rarest words occurs elsewhere in the corpus.
    counts = Counter(t for doc in corpus.train for t in tokenize(doc))
    assert all(counts[word] == 1 for word in ("quorvath", "brindlemoor", "lighthouse", "harbour"))


def test_canary_query_paraphrases_rather_than_copies():
    canary, query = tokenize(CANARY), tokenize(CANARY_QUERY)
    assert {"quorvath", "brindlemoor", "heron", "1871", "harbour"} <= set(canary) & set(query)
    # Not a copy: the longest run of tokens shared with the canary is 5 of the query's 32, and
    # fewer than half of the query's word pairs occur in the canary.
    longest = max(
        next(k for k in range(len(query) + 1) if i + k == len(query) or j + k == len(canary)
             or query[i + k] != canary[j + k])
        for i in range(len(query)) for j in range(len(canary))
    )  # fmt: skip
    assert longest <= 5, longest
    pairs = set(zip(canary, canary[1:]))
    assert sum(pair in pairs for pair in zip(query, query[1:])) < (len(query) - 1) / 2


def test_documents_cut_paragraphs_at_word_boundaries():
    paragraph = " ".join(f"w{i}" for i in range(25))
    assert documents([paragraph], max_tokens=10, min_tokens=3) == [
        " ".join(f"w{i}" for i in range(10)),
        " ".join(f"w{i}" for i in range(10, 20)),
        " ".join(f"w{i}" for i in range(20, 25)),
    ]
    assert documents([paragraph], max_tokens=10, min_tokens=6) == documents([paragraph], 10, 3)[:2]  # short tail
    with pytest.raises(ValueError, match="min_tokens"):
        documents([paragraph], max_tokens=2, min_tokens=3)


def test_vocabulary_and_batches():
    vocab = Vocabulary(["The list, the tuple.", "a list"])
    assert vocab.words[:4] == ["<bos>", "<unk>", "list", "the"]  # by count, then spelling
    ids = vocab.encode("the LIST of sets")
    assert ids == [vocab.bos, vocab.index["the"], vocab.index["list"], vocab.unk, vocab.unk]
    assert vocab.decode(ids) == "the list <unk> <unk>"

    batch = lm_batches(["a list", "the tuple , the list"], vocab, batch_size=8)[0]
    assert batch["input_ids"].shape == (2, 6)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["labels"][0].tolist() == [vocab.bos, vocab.index["a"], vocab.index["list"]] + [IGNORE_INDEX] * 3
    unknown = lm_batches(["the word"], vocab, 1)[0]
    assert unknown["labels"].tolist() == [[vocab.bos, vocab.index["the"], IGNORE_INDEX]]  # <unk>: not supervised
    assert len(lm_batches(["a"] * 5, vocab, 2)) == 3
    with pytest.raises(ValueError, match="batch_size"):
        lm_batches(["a"], vocab, 0)


def test_rank_counts_strictly_higher_scores():
    scores = np.array([0.5, 2.0, 0.5, -1.0])
    assert [rank_of(scores, row) for row in range(4)] == [2, 1, 2, 4]


def test_command_line_options_reach_the_config(capsys):
    assert parse_args([]) == lm_canary.ExampleConfig()
    config = parse_args(["--quick", "--steps", "7", "--proj-dim", "64", "--threads", "2", "--quiet"])
    assert config == dataclasses.replace(QUICK, steps=7, proj_dim=64, threads=2, quiet=True)
    with pytest.raises(SystemExit):
        parse_args(["--proj-dim", "0"])
    assert "--proj-dim: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_help_says_what_it_does_in_plain_text(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "python -m trak_core.examples.lm_canary" in text and "canary" in text and "--quick" in text
    assert "``" not in text and ":mod:" not in text, text


def test_without_transformers_the_example_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # reads as not installed
    assert lm_canary.main(["--quick"]) == 2
    assert "pip install 'fastjl[lm]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_result():
    from . import hf_models  # noqa: F401 - skips without transformers (and hides a broken torchvision)

    threads = torch.get_num_threads()
    result = lm_canary.run_example(dataclasses.replace(QUICK, quiet=True))
    assert torch.get_num_threads() == threads  # the example's one thread does not leak out
    return result


def test_quick_run_ranks_the_canary_first(quick_result):
    # Asserted: rank 1, the target itself, in quick mode as well.  Measured on the 2-core VM
    # (seed 0): the canary scores 0.096, the runner-up 0.037, so rank 1 is not a near tie that
    # another CPU's float summation order could flip; the test asks for a 1.5x lead.
    n = len(quick_result.train_docs)
    assert n >= 500
    canary = quick_result.queries[0]
    assert canary.kind == "canary paraphrase" and canary.text == CANARY_QUERY
    assert canary.canary_rank == 1 and canary.top[0][0] == quick_result.canary_index
    column = quick_result.scores[:, 0]
    runner_up = np.sort(column)[-2]
    assert column[quick_result.canary_index] > 1.5 * runner_up
    assert quick_result.losses[-1] < quick_result.losses[0] - 1.0  # the model did learn


def test_queries_unrelated_to_the_canary_do_not_rank_it_first(quick_result):
    # The rank depends on the query: for the held-out Python-docs texts and the generated text
    # the canary is nowhere near the top 1% (so the check can fail: a pipeline that favoured the
    # canary row, e.g. by its norm, or scored the wrong rows, would show it here).
    n = len(quick_result.train_docs)
    others = quick_result.queries[1:]
    assert [q.kind for q in others] == ["held-out", "held-out", "generated"]
    for query in others:
        assert query.canary_rank > n // 100, query
        assert query.top[0][0] != quick_result.canary_index


def test_report_prints_the_top_documents_as_text(quick_result):
    report = format_report(quick_result)
    assert "[CANARY]" in report and CANARY[:60] in report
    assert "canary check: PASS: rank 1 of" in report
    assert report.count("canary rank:") == len(quick_result.queries)
    generated = quick_result.queries[-1].text
    assert generated.startswith("the import statement") and len(generated.split()) > 20


def test_exit_status_says_whether_the_canary_check_passed(quick_result, monkeypatch, capsys):
    n = len(quick_result.train_docs)
    outside = dataclasses.replace(quick_result.queries[0], canary_rank=n // 100 + 1)
    failing = dataclasses.replace(quick_result, queries=[outside] + quick_result.queries[1:])
    for result, status, verdict in ((quick_result, 0, "PASS"), (failing, 1, "FAIL")):
        monkeypatch.setattr(lm_canary, "run_example", lambda config, result=result: result)
        assert lm_canary.main(["--quick"]) == status
        assert f"canary check: {verdict}: rank" in capsys.readouterr().out
