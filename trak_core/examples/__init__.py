"""Runnable examples of trak_core on real data.

* ``python -m trak_core.examples.lm_canary``: a small GPT-2 trained on the Python
  documentation's prose, TRAK's top training documents for held-out and generated texts, and a
  planted canary document that a paraphrasing query must rank first (``--quick`` for a shorter
  run).
"""
