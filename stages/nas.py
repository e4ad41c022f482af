"""Stage `nas`: one shard of the NAS proxy search (spec section 7); `nas_merge` joins the shards.

    python -m stages.nas --dataset digits --shard 0

The candidates are the ConvNets of ``nas.space`` that fit the images, or ``nas.sample`` of them
drawn with ``nas.seed`` (:func:`candidates`); shard ``i`` of the S in ``nas.shards`` (0 .. S-1) takes
every S-th one, starting at ``i``. Each candidate is trained with the evaluate section's
protocol and seed ``nas.seed`` on the whole training part of the ``validation`` split
(``nas.full_epochs``) and on every proxy (``nas.proxy_epochs``): each method's set and the
random subset of the same size at every ipc of ``nas.ipcs``. It is scored on the validation
split (the ranking) and on the test set (read after training, never used to choose).
Writes ``<paths.results>/nas/<dataset>/shard<i>.json``: per candidate, its index in the space,
its configuration, and per set its validation and test accuracy (and each set's size); and
``shard<i>.info.json``: the training seconds per candidate and set (wall clock stays out of the
shard, so the same inputs give the same bytes).

MLflow: one run per shard (the candidates' accuracies by candidate index as steps).
"""
from __future__ import annotations

import sys

from .common import runner
from .common.params import evaluate_settings, section
from .common.sets import FULL, proxy_sets, set_name


def candidates(params: dict, im_size: int) -> tuple[int, list[tuple[int, dict]]]:
    """(size of the fitting space, [(index in it, configuration)] of every candidate in space order)."""
    from atom.nas import sample_space, search_space

    sp, nas = params["nas"]["space"], params["nas"]
    space = search_space(sp["depths"], sp["widths"], sp["acts"], sp["norms"], sp["pools"], im_size=im_size)
    if len(space) < 2:
        raise ValueError(f"nas.space: {len(space)} configuration(s) fit {im_size}x{im_size} images; need two")
    return len(space), [(i, space[i]) for i in sample_space(len(space), nas["sample"], nas["seed"])]


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__.splitlines()[0], method=False)
    p.add_argument("--shard", type=int, required=True, help="shard index, one of nas.shards")
    args = p.parse_args(argv)
    st = runner.Stage("nas", args)
    st.remove_stale()
    nas = st.params["nas"]
    if args.shard not in nas["shards"]:
        raise ValueError(f"--shard: {args.shard} is not one of nas.shards {nas['shards']}")
    _, cfg, _ = evaluate_settings(st.params, st.dataset, "method")
    for key in ("net", "epochs"):  # the candidate's net; nas.full_epochs / nas.proxy_epochs
        cfg.pop(key)
    cfg["arch"] = "convnet"
    from atom.io import write_json
    from atom.nas import train_candidate
    from atom.validation import carve

    prep = st.load("prepared")
    k = len(prep["classes"])
    device = st.resolved_device()
    val = section(st.params, "validation", st.dataset)
    train_x, train_y, val_x, val_y = carve(prep["train_images"], prep["train_labels"], val["per_class"],
                                           val["seed"], k)
    sets = {FULL: (train_x, train_y, nas["full_epochs"])}
    for ipc in nas["ipcs"]:
        for name, (x, y) in proxy_sets(st, prep, ipc, k).items():
            sets[set_name(name, ipc)] = (x, y, nas["proxy_epochs"])
    space_size, cands = candidates(st.params, int(train_x.shape[-1]))
    mine = cands[args.shard::len(nas["shards"])]
    st.log.info("shard %d of %d: %d of %d candidates, sets %s", args.shard, len(nas["shards"]), len(mine),
                len(cands), list(sets))
    rows, seconds = [], {}
    for index, config in mine:
        scores = train_candidate(config, sets, val_x, val_y, test_x=prep["test_images"], test_y=prep["test_labels"],
                                 seed=nas["seed"], device=device, num_classes=k, **cfg)
        # wall clock to the info file: the shard itself is the same bytes for the same inputs
        seconds[str(index)] = {n: s.pop("seconds") for n, s in scores.items()}
        rows.append({"index": index, "config": config, "sets": scores})
        st.log.info("candidate %d %s: full %.2f, %s", index, config, scores[FULL]["val_accuracy"],
                    {n: round(s["val_accuracy"], 2) for n, s in scores.items() if n != FULL})
    out = {"dataset": st.dataset, "shard": args.shard, "shards": nas["shards"], "space_size": space_size,
           "candidates_total": len(cands), "sets": list(sets), "sample": nas["sample"], "seed": nas["seed"],
           "device": device, "images": {n: int(x.shape[0]) for n, (x, _, _) in sets.items()},
           "proxy_epochs": nas["proxy_epochs"], "full_epochs": nas["full_epochs"], "rows": rows}
    write_json(out, st.path("nas_shard", shard=args.shard))
    write_json({"seconds": seconds}, st.path("nas_shard_info", shard=args.shard))

    with st.tracker().run("nas", name=f"nas/{st.dataset}/shard{args.shard}",
                          extra_tags={"shard": str(args.shard)}) as run:
        run.log_params({"shard": args.shard, "candidates": [r["index"] for r in rows], **nas})
        for r in rows:
            run.log_metrics({f"{n.replace('/', '_')}_val_accuracy": s["val_accuracy"]
                             for n, s in r["sets"].items()}, step=r["index"])
        run.log_artifact(st.path("nas_shard", shard=args.shard))


if __name__ == "__main__":
    sys.exit(runner.run(main))
