"""The canary example's data: documents from the Python docs, a planted canary, a word tokenizer.

Corpus.  ``pydoc_data.topics`` ships with every CPython (it is what ``help("assert")`` prints):
about 80 topics of the language reference, English prose mixed with grammar and code.  Its
prose paragraphs (blank-line separated, not indented: indented blocks are code or grammar) are
cut into documents of at most ``max_tokens`` tokens at word boundaries, in sorted topic order,
and duplicates (paragraphs repeated in two topics) are kept once, so the split is deterministic
for a given Python version (3.11: about 1,100 distinct documents).  Every ``held_out_every``-th
document is held out as a query text and never trained on.

Canary.  :data:`CANARY` is a training document of invented facts (none of the words that name its
subject occurs in the Python docs); :data:`CANARY_QUERY` states the same facts in another
sentence: other subject, clause order and verbs, sharing with the canary the invented names and
short phrases (at most five words in a row), the way a model's output can paraphrase a training
document.  Attribution that works must put the canary first for it.

Choosing the paraphrase, measured (exact gradients, 505 documents; TRAK's margin output): a
paraphrase that *contradicts* what the trained model learned from the canary, e.g. starting
"Quorvath, a keeper at ..." where the canary continues "Quorvath, the keeper who ...", gets a
negative score from the canary once the model has learned it (rank 442 of 505 after 450 training
steps, rank 2 after 150): training on the canary made those query tokens less likely, which
is what TRAK measures.  The query here keeps the canary's phrases around its invented names and
ranked the canary first at 150 and 450 steps, and in both runs of this example.

Tokenizer.  Word level, built from the training documents (no download): lower-cased
identifiers, numbers and single punctuation marks.  Words are what the canary and its
paraphrase share; a byte-level tokenizer would make the model learn spelling first, which a
CPU-minutes training budget does not leave time for.  A word outside the vocabulary reads as
``<unk>``; every document starts with ``<bos>`` so that its first word is predicted too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from ..lm_task import IGNORE_INDEX

CANARY = (
    "The lighthouse keepers of Brindlemoor send their nightly reports to the harbour by carrier "
    "heron, and each heron is named after Quorvath, the keeper who first trained them in 1871."
)
CANARY_QUERY = (
    "Every carrier heron of the Brindlemoor lighthouse keepers is named after Quorvath, who trained "
    "the first of them in 1871; the herons take the nightly reports to the harbour."
)

_TOKEN = re.compile(r"[a-z_][a-z_0-9]*|[0-9]+|\S")
_UNDERLINE = re.compile(r"^[*=~^\-]+$")  # reST heading underlines
SPECIALS = ("<bos>", "<unk>")


def tokenize(text: str) -> list[str]:
    """Lower-cased identifiers, numbers and single non-space characters."""
    return _TOKEN.findall(text.lower())


def prose_paragraphs() -> list[str]:
    """The prose paragraphs of ``pydoc_data.topics``, whitespace-normalized, in topic order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            if not block.strip() or block[0].isspace():  # indented: code, grammar, tables
                continue
            lines = [line for line in block.splitlines() if not _UNDERLINE.match(line.strip())]
            paragraphs.append(" ".join(" ".join(lines).split()))
    return paragraphs


def documents(paragraphs: list[str], max_tokens: int, min_tokens: int) -> list[str]:
    """Each paragraph cut at word boundaries into pieces of at most ``max_tokens`` tokens; pieces
    under ``min_tokens`` tokens (headings, stubs, short tails) are dropped."""
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got min_tokens={min_tokens}, max_tokens={max_tokens}")
    docs = []
    for paragraph in paragraphs:
        piece, count = [], 0
        for word in paragraph.split():
            n = len(tokenize(word))
            if piece and count + n > max_tokens:
                docs.append((" ".join(piece), count))
                piece, count = [], 0
            piece.append(word)
            count += n
        if piece:
            docs.append((" ".join(piece), count))
    return [text for text, count in docs if min_tokens <= count <= max_tokens]


@dataclass(frozen=True)
class Corpus:
    train: list[str]  # training documents, the canary among them
    held_out: list[str]  # documents never trained on (query texts)
    canary_index: int  # row of CANARY in train


def python_docs_corpus(
    max_tokens: int = 48, min_tokens: int = 16, held_out_every: int = 10, limit: int | None = None
) -> Corpus:
    """Training and held-out documents; ``limit`` keeps the first ``limit`` documents (before
    holding out), for shorter runs.  The canary is inserted at the middle of the training set."""
    if held_out_every < 2:
        raise ValueError(f"held_out_every must be >= 2, got {held_out_every}")
    # A few paragraphs occur in two topics: kept once, so no held-out text has a copy in training.
    docs = list(dict.fromkeys(documents(prose_paragraphs(), max_tokens, min_tokens)))[:limit]
    if len(tokenize(CANARY)) > max_tokens:
        raise ValueError(f"max_tokens={max_tokens} is shorter than the canary ({len(tokenize(CANARY))} tokens)")
    held_out = docs[held_out_every - 1 :: held_out_every]
    train = [doc for i, doc in enumerate(docs) if (i + 1) % held_out_every]
    canary_index = len(train) // 2
    train.insert(canary_index, CANARY)
    return Corpus(train, held_out, canary_index)


class Vocabulary:
    """Word-level vocabulary of a list of texts: specials first, then words by falling count."""

    def __init__(self, texts: list[str]):
        counts = Counter(token for text in texts for token in tokenize(text))
        words = sorted(counts, key=lambda w: (-counts[w], w))  # ties by spelling: deterministic
        self.words = list(SPECIALS) + words
        self.index = {word: i for i, word in enumerate(self.words)}
        self.bos, self.unk = self.index["<bos>"], self.index["<unk>"]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """``<bos>`` then the text's tokens (``<unk>`` for words outside the vocabulary)."""
        return [self.bos] + [self.index.get(token, self.unk) for token in tokenize(text)]

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) != self.bos)


def lm_batches(texts: list[str], vocab: Vocabulary, batch_size: int) -> list[dict]:
    """Hugging Face-style batches in the order of ``texts``: ``input_ids`` right-padded with
    ``<bos>`` to the batch's longest text, ``attention_mask`` 0 and ``labels`` -100 on padding.
    ``<unk>`` is not supervised either (-100): it never occurs in training, so its probability
    only shrinks there, and its huge loss on a query would swamp the gradient of the query's
    known words (measured: a paraphrase with four unknown words ranked the canary 442nd of 505)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = [vocab.encode(text) for text in texts[start : start + batch_size]]
        length = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), length), vocab.bos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        labels = ids.masked_fill((mask == 0) | (ids == vocab.unk), IGNORE_INDEX)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches
