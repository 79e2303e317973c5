"""``python -m trak_core.examples.lm_canary``: TRAK on a small GPT-2 trained on the Python docs.

What it does, on a CPU, with nothing downloaded:

1. cuts the prose of ``pydoc_data.topics`` (shipped with CPython) into >= 500 short training
   documents, plants a canary among them (a document of invented facts) and holds every
   tenth document out (:mod:`.lm_corpus`);
2. trains a tiny Hugging Face GPT-2 (tied embeddings) for a fixed number of seeded steps
   (:mod:`.lm_training`);
3. computes TRAK scores with :func:`trak_core.attribute` (``task="causal_lm"``, the hooks path:
   every parameter, embeddings included, projected without per-example gradients) of every
   training document for a few query texts: a paraphrase of the canary, held-out documents and
   a text the model generates;
4. prints each query's top training documents as text, and the canary's rank for every query.

The canary check is a known-answer test: the paraphrase shares the canary's invented names and
a few short phrases but not its sentence (see :mod:`.lm_corpus`), so only attribution that
links the query's gradient to the canary's (through the trained model, the projection, the
store, the inverse and the scoring, each with the right row order) ranks it first.  Target:
first among >= 500 documents; the run fails (exit status 1) when the canary falls outside the
top 1%, and the held-out queries show it is not ranked first for everything.

Design choices, and why:

* Word-level tokens: see :mod:`.lm_corpus` (what a canary and its paraphrase share are words).
* One checkpoint (the trained model): TRAK's ensembles average several models; one is enough
  for the canary and keeps the run to minutes on two cores.
* ``proj_dim`` about the number of training documents and trak_core's default λ rule (which
  keeps the inverse well-posed at K >= n, where TRAK's λ = 0 returns noise).
* One CPU thread by default: the model is so small that a second thread barely helps, while on
  a machine shared with other work two threads waiting on each other made training 4x slower
  (measured on the 2-core VM under load from other jobs: the quick run's 80 training steps took
  83 s with two threads, 22 s with one); ``--threads`` changes it.
* ``--quick`` (the CI test) keeps >= 500 training documents, so it checks the target itself,
  with fewer training steps and a smaller K.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..attribute import attribute
from .lm_corpus import CANARY_QUERY, Vocabulary, lm_batches, python_docs_corpus
from .lm_training import gpt2, import_transformers, sample, train


@dataclass(frozen=True)
class ExampleConfig:
    limit: int | None = None  # documents of the Python docs kept (None: all, about 1,100)
    max_tokens: int = 48  # longest document, in tokens
    width: int = 64
    layers: int = 2
    heads: int = 4
    steps: int = 600  # training steps
    batch_size: int = 32  # documents per training and featurizing batch
    lr: float = 3e-3
    proj_dim: int = 1024  # K
    held_out_queries: int = 2  # held-out documents used as queries
    prompt: str = "the import statement"  # generation prompt of the generated query
    generated_tokens: int = 24
    top_k: int = 3  # documents printed per query
    seed: int = 0
    threads: int | None = 1  # torch CPU threads during the run (None: torch's default); see below
    quiet: bool = False  # no progress bars


QUICK = ExampleConfig(limit=560, steps=80, proj_dim=256)


@dataclass(frozen=True)
class QueryResult:
    kind: str  # "canary paraphrase", "held-out", "generated"
    text: str
    top: list[tuple[int, float]]  # (training document, score), best first
    canary_rank: int  # 1 = the canary scores highest


@dataclass(frozen=True)
class ExampleResult:
    config: ExampleConfig
    train_docs: list[str]
    canary_index: int
    vocab_size: int
    num_params: int
    losses: list[float]
    queries: list[QueryResult]
    scores: np.ndarray  # (training documents, queries), TRAK scores
    seconds: dict[str, float]

    @property
    def canary_rank(self) -> int:
        """The canary's rank for the paraphrasing query."""
        return self.queries[0].canary_rank

    @property
    def canary_passes(self) -> bool:
        """The canary within the top 1% of the training documents (rank 1 is the target)."""
        return self.canary_rank <= max(1, len(self.train_docs) // 100)


def rank_of(scores: np.ndarray, row: int) -> int:
    """1 + the number of rows scoring strictly higher than ``row`` (``scores``: one column)."""
    return 1 + int(np.sum(scores > scores[row]))


def run_example(config: ExampleConfig = ExampleConfig()) -> ExampleResult:
    """Corpus, training, generation, TRAK scores and ranks; see the module docstring."""
    import_transformers()  # fail before any work when it is missing
    previous = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(previous)


def _run(config: ExampleConfig) -> ExampleResult:
    start = time.perf_counter()
    corpus = python_docs_corpus(max_tokens=config.max_tokens, limit=config.limit)
    vocab = Vocabulary(corpus.train)
    train_batches = lm_batches(corpus.train, vocab, config.batch_size)
    model = gpt2(len(vocab), config.width, config.layers, config.heads, config.max_tokens + 16, config.seed)
    losses = train(model, train_batches, config.steps, config.lr, config.seed)
    trained = time.perf_counter()

    prompt = vocab.encode(config.prompt)
    generated = sample(model, prompt, config.generated_tokens, 0.7, config.seed, banned=(vocab.bos, vocab.unk))
    step = max(1, len(corpus.held_out) // max(1, config.held_out_queries))
    held_out = corpus.held_out[::step][: config.held_out_queries]
    queries = [("canary paraphrase", CANARY_QUERY)] + [("held-out", text) for text in held_out]
    queries.append(("generated", vocab.decode(generated)))

    scores = attribute(
        model,
        [model.state_dict()],
        train_batches,
        lm_batches([text for _, text in queries], vocab, config.batch_size),
        proj_dim=config.proj_dim,
        task="causal_lm",
        quiet=config.quiet,
        logging_level=30,  # warnings only: the example prints its own report
    )
    attributed = time.perf_counter()

    results = []
    for column, (kind, text) in enumerate(queries):
        order = np.argsort(-scores[:, column], kind="stable")[: config.top_k]
        top = [(int(row), float(scores[row, column])) for row in order]
        results.append(QueryResult(kind, text, top, rank_of(scores[:, column], corpus.canary_index)))
    seconds = {"train": trained - start, "trak": attributed - trained, "total": attributed - start}
    return ExampleResult(config, corpus.train, corpus.canary_index, len(vocab),
                         sum(p.numel() for p in model.parameters()), losses, results, scores, seconds)  # fmt: skip


def format_report(result: ExampleResult) -> str:
    c, n = result.config, len(result.train_docs)
    lines = [
        f"GPT-2 ({c.layers} layers, width {c.width}, {result.num_params:,} parameters, tied embeddings, "
        f"{result.vocab_size:,}-word vocabulary) trained {c.steps} steps on {n:,} documents of the Python docs "
        f"(pydoc_data.topics): loss {_first_last(result.losses)} ({result.seconds['train']:.1f} s)",
        f"TRAK (trak_core.attribute, task='causal_lm', hooks path, K={c.proj_dim}, 1 checkpoint): "
        f"{n:,} training documents x {len(result.queries)} queries ({result.seconds['trak']:.1f} s)",
    ]
    for number, query in enumerate(result.queries, 1):
        lines += ["", f"query {number} ({query.kind}): {_clip(query.text, 200)}"]
        for place, (row, score) in enumerate(query.top, 1):
            tag = " [CANARY]" if row == result.canary_index else ""
            lines.append(f"  {place}. doc {row:5d}  score {score:9.3g}{tag}  {_clip(result.train_docs[row], 150)}")
        lines.append(f"  canary rank: {query.canary_rank} of {n:,}")
    verdict = "PASS" if result.canary_passes else "FAIL"
    lines += ["", f"canary check: {verdict}: rank {result.canary_rank} of {n:,} for its paraphrase "
              f"(target: 1; fails outside the top 1% = rank > {max(1, n // 100)})",
              f"total {result.seconds['total']:.1f} s"]  # fmt: skip
    return "\n".join(lines)


def _first_last(losses: list[float]) -> str:
    return f"{losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "untrained"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_args(argv=None) -> ExampleConfig:
    p = argparse.ArgumentParser(
        prog="python -m trak_core.examples.lm_canary",
        description="TRAK on a small GPT-2 trained on the Python docs' prose: the top training documents of a few "
        "texts, and a planted canary that a paraphrase of it must rank first (exit status 1 outside the top 1%).",
    )
    p.add_argument("--quick", action="store_true", help="shorter run (the CI test): 500+ documents, fewer steps")
    p.add_argument("--steps", type=_at_least(0), help="training steps")
    p.add_argument("--proj-dim", type=_at_least(1), help="K, TRAK's projection dimension")
    p.add_argument("--top-k", type=_at_least(1), help="documents printed per query")
    p.add_argument("--seed", type=_at_least(0), help="seed of the model, the training order and the sampling")
    p.add_argument("--threads", type=_at_least(1), help="torch CPU threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    config = QUICK if args.quick else ExampleConfig()
    chosen = {"steps": args.steps, "proj_dim": args.proj_dim, "top_k": args.top_k, "seed": args.seed,
              "threads": args.threads}  # fmt: skip
    config = dataclasses.replace(config, **{k: v for k, v in chosen.items() if v is not None})
    return dataclasses.replace(config, quiet=args.quiet) if args.quiet else config


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def main(argv=None) -> int:
    config = parse_args(argv)
    try:
        import_transformers()
    except ImportError as err:
        print(err, file=sys.stderr)
        return 2
    result = run_example(config)
    print(format_report(result))
    return 0 if result.canary_passes else 1


if __name__ == "__main__":
    sys.exit(main())
