"""The settings a store is bound to: featurizing with any other value would mix incompatible rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .store_errors import StoreError


@dataclass(frozen=True)
class StoreSettings:
    """Everything that changes the numbers written into a store.

    Attributes:
        train_set_size: n, number of train examples (rows of every per-checkpoint array).
        proj_dim: K, projected dimension (columns).
        projector: where projections come from: ``"fastjl"`` or a custom projector's class name.
        seed: base projection seed (checkpoint m uses ``seed + 10^4 m``); None for custom projectors.
        kind: projection kind (``"rademacher"``, ``"gaussian"``, ...); None for custom projectors.
        dtype: dtype of the stored features (``"float32"``).
        xtx_dtype: dtype in which ``XᵀX`` is accumulated and factorized.
        num_params: number of parameters the gradients are taken with respect to.
        model: fingerprint of the architecture (names and shapes of those parameters).
        task: the model output function (class name).
        lambda_reg: the regularization rule, e.g. ``"default(scale=0.5)"`` or ``"0.0"``.
        sparsity: nonzeros per row of P for ``kind="sjlt"``/``"grass"``; None for the other kinds.
        mask_rate: GraSS's keep rate for ``kind="grass"``; None for the other kinds.
        module_columns: per-module features (``TRAKer(per_module=True)``): ``((module, start,
            stop), ...)``, the columns of each module's block (see :mod:`trak_core.module_blocks`);
            None for whole-model features.  A store never mixes the two.
        factor_masks: ``(k_out, k_in)`` of ``kind="factgrass"`` (coordinates kept per factor of
            each Linear layer); None for the other kinds.

    The last four default to None so that stores written before they existed (whose settings
    lack them) still open.
    """

    train_set_size: int
    proj_dim: int
    projector: str
    seed: int | None
    kind: str | None
    dtype: str
    xtx_dtype: str
    num_params: int
    model: str
    task: str
    lambda_reg: str
    sparsity: int | None = None
    mask_rate: float | None = None
    module_columns: tuple[tuple[str, int, int], ...] | None = None
    factor_masks: tuple[int, int] | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StoreSettings:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("module_columns") is not None:  # JSON lists -> the hashable tuples compared
            values["module_columns"] = tuple((str(m), int(a), int(b)) for m, a, b in values["module_columns"])
        if values.get("factor_masks") is not None:
            values["factor_masks"] = tuple(int(k) for k in values["factor_masks"])
        return cls(**values)

    def mismatches(self, stored: StoreSettings) -> list[str]:
        """Human-readable differences ``"name: store has X, requested Y"``; empty if compatible."""
        if (self.module_columns is None) != (stored.module_columns is None):
            granularity = {True: "whole-model features", False: "per-module features (per_module=True)"}
            return [
                f"features: store has {granularity[stored.module_columns is None]}, "
                f"requested {granularity[self.module_columns is None]}"
            ]
        return [
            f"{f.name}: store has {getattr(stored, f.name)!r}, requested {getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(stored, f.name)
        ]


class StoreMismatchError(StoreError, ValueError):
    """Raised when a store was created with other settings than the ones requested."""
