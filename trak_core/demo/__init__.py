"""End-to-end demo: TRAK on scikit-learn's digits, evaluated with the linear datamodeling score.

Run ``python -m trak_core.demo`` (``--help`` for options).  Needs scikit-learn (the digits data
ship inside its wheel, so nothing is downloaded) and matplotlib (the figure).
"""
