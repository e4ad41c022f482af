"""A labelled picture of a saved set, beside real training images of each class.

    python scripts/figure.py results/figure-runs/atom-ipc10-cpu-wide-seed0.pt \
        --dataset cifar10-jpeg --title "CIFAR-10: ATOM, 10 images per class" \
        --subtitle "protocol cpu-wide, distillation seed 0, iteration 250 of 300 kept" \
        --out docs/figures/cifar10_atom_ipc10.png

The set is a safetensors file with ``images`` and ``labels`` in the zca stage's
preprocessing: ``scripts/ablation.py --save`` writes the kept, decoded set (what a network
trains on), a distill stage's ``synthetic.pt`` the stored one (decoded here when its config
says ``factor > 1``). The real images and the exact inverse preprocessing come from the zca
stage's output (``<paths.prepared>/<dataset>.pt``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atom import viz  # noqa: E402
from atom.formation import training_set  # noqa: E402
from atom.io import load_tensors  # noqa: E402
from stages.common.contract import PARAMS  # noqa: E402
from stages.common.params import load_params  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", help="a safetensors file with images and labels")
    ap.add_argument("--dataset", required=True, help="a key of params.yaml's datasets (its prepared data)")
    ap.add_argument("--params", default=PARAMS)
    ap.add_argument("--prepared", help="the zca stage's output (default: <paths.prepared>/<dataset>.pt)")
    ap.add_argument("--title", default="")
    ap.add_argument("--subtitle", default="")
    ap.add_argument("--per-class", type=int, default=10, help="images shown per class (default 10)")
    ap.add_argument("--out", required=True, help="the PNG to write")
    a = ap.parse_args(argv)
    params = load_params(a.params)
    if a.dataset not in params["datasets"]:
        raise SystemExit(f"--dataset: {a.dataset!r} is not a key of {a.params}'s datasets")
    prepared = Path(a.prepared or Path(params["paths"]["prepared"]) / f"{a.dataset}.pt")
    if not prepared.is_file():
        raise SystemExit(f"{prepared}: no prepared data; run python -m stages.zca --dataset {a.dataset} first")
    record = load_tensors(a.set)
    if "images" not in record or "labels" not in record:
        raise SystemExit(f"{a.set}: expected tensors 'images' and 'labels', found {sorted(record)}")
    images, labels = training_set(record)
    prep = load_tensors(prepared)
    out = viz.plot_class_grid(images, labels, prep["state"], a.out, classes=prep["classes"],
                              real=(prep["train_images"], prep["train_labels"]), max_per_class=a.per_class,
                              title=a.title, subtitle=a.subtitle, dpi=params["visualize"]["dpi"],
                              min_cell=params["visualize"]["grid_cell"])
    print(out)


if __name__ == "__main__":
    main()
