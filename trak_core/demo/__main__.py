"""``python -m trak_core.demo``: TRAK on the digits, LDS at K < n and K >= n (rademacher, kronecker,
sjlt and grass features), a figure."""

from __future__ import annotations

import argparse
import logging
import sys

from fastjl.devices import device_option_error

from ..regularization import DEFAULT_LAMBDA_SCALE
from .run import DemoConfig, format_report, run_demo


def parse_args(argv=None) -> DemoConfig:
    defaults = DemoConfig()
    p = argparse.ArgumentParser(
        prog="python -m trak_core.demo",
        description=__doc__.replace("``", ""),
        epilog="Writes results.json, trak_digits.png and stores/ (one TRAK store per run, about 490 MiB "
        "with the defaults) into --out-dir.  The stores are kept for inspection and never reused by the "
        "demo: the last lines printed say where they are and how large; --remove-stores deletes them "
        "at the end.",
    )
    p.add_argument("--n-train", type=int, default=defaults.n_train, help="train examples n")
    p.add_argument("--n-targets", type=int, default=defaults.n_targets, help="targets t (held out)")
    p.add_argument(
        "--checkpoints", type=int, default=defaults.checkpoints, help="models trained on all of the train set"
    )
    p.add_argument("--subsets", type=int, default=defaults.subsets, help="random 50%% subsets for the LDS")
    p.add_argument("--retrains", type=int, default=defaults.retrains, help="models trained per subset")
    p.add_argument("--hidden", type=int, default=defaults.hidden, help="hidden width (0: logistic regression)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="full-batch Adam steps per model")
    p.add_argument(
        "--proj-dims",
        type=lambda s: tuple(int(k) for k in s.split(",")),
        default=defaults.proj_dims,
        help="comma-separated projection dimensions K",
    )
    p.add_argument("--no-trak-comparison", dest="compare_trak", action="store_false", help="skip the λ = 0 runs")
    p.add_argument("--no-kronecker", dest="kronecker", action="store_false", help="skip the kronecker-kind runs")
    p.add_argument("--no-sparse", dest="sparse", action="store_false", help="skip the sjlt and grass runs")
    p.add_argument("--sparsity", type=int, default=defaults.sparsity, help="nonzeros per row of P for sjlt/grass")
    p.add_argument(
        "--grass-multiplier",
        type=int,
        default=defaults.grass_multiplier,
        help="grass keeps about this many times K of the D coordinates (dattri's grass_N)",
    )
    p.add_argument("--lambda-scale", type=float, default=DEFAULT_LAMBDA_SCALE, help="scale of the default λ rule")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--device", default=defaults.device, help="cpu or cuda")
    p.add_argument("--out-dir", default=defaults.out_dir, help="stores, figure and results.json go here")
    p.add_argument(
        "--remove-stores", action="store_true", help="delete OUT_DIR/stores at the end (figure and results stay)"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="log every stage of trak_core (INFO)")
    args = p.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    fields = {k: v for k, v in vars(args).items() if k != "verbose"}
    return DemoConfig(**fields, log_level=level)


def main(argv=None) -> int:
    config = parse_args(argv)
    error = device_option_error("trak_core.demo", config.device)
    if error:  # before any work: one line, not torch's traceback from deep inside training
        print(error, file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s: %(message)s")
    print(format_report(run_demo(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
