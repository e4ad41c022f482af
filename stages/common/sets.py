"""The proxy sets that the crossarch and nas stages train on, and how NAS results name them.

:func:`proxy_sets`: every method's distilled set at an ipc, as a network trains on it (decoded
when distilled with ``distill.factor`` > 1), then the random real subset of the same size,
drawn as the random baseline draws it (``runtime.seed``, from the training part of the
``validation`` split). :func:`set_name` / :data:`FULL`: the keys of NAS results
(``atom/ipc10``, ``random/ipc10``, ``full``), shared by the nas and nas_merge stages.
"""
from __future__ import annotations

from .params import section

__all__ = ["RANDOM", "FULL", "proxy_sets", "set_name"]

RANDOM = "random"
FULL = "full"


def proxy_sets(st, prep: dict, ipc: int, num_classes: int) -> dict:
    """{name: (images, labels)}: every method's synthetic set at ``ipc`` (read through the
    stage's :meth:`~stages.common.runner.Stage.load`, so checked as every pipeline file is),
    then the random subset of the same size."""
    from atom.evaluation import baseline_set
    from atom.formation import training_set
    from atom.validation import carve

    out = {}
    params = st.params
    for m in params["experiment"]["methods"]:
        out[m] = training_set(st.load("synthetic", method=m, ipc=ipc))  # decoded when distilled with factor > 1
    val = section(params, "validation", st.dataset)
    pool_x, pool_y, _, _ = carve(prep["train_images"], prep["train_labels"], val["per_class"], val["seed"],
                                 num_classes)
    out[RANDOM] = baseline_set(RANDOM, pool_x, pool_y, ipc=ipc, seed=params["runtime"]["seed"],
                               num_classes=num_classes)
    return out


def set_name(name: str, ipc: int) -> str:
    """Key of a proxy set in the NAS results: ``<method|random>/ipc<k>``; the whole set is :data:`FULL`."""
    return f"{name}/ipc{ipc}"
