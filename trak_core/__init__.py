"""trak_core: TRAK features, regularized inverses and scores on top of fastjl (in progress).

Depends only on fastjl's public API (``fastjl.Projector``, ``fastjl.project``).
"""
