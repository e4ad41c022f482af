"""The pipeline's commands, one module per rule family, each run as ``python -m stages.<name>``
(the Snakefile and dvc.yaml run exactly these; :mod:`stages.common.contract` declares them):

- ``download``: fetch one dataset; ``zca``: normalise and whiten it;
- ``pool``: train the ConvNets ATOM+ distils inside;
- ``distill``: learn one synthetic set (dataset x method x ipc);
- ``evaluate``: train fresh networks on a set and test them (rules ``evaluate`` and the
  baselines ``evaluate_random``, ``evaluate_selected``, ``evaluate_full``);
- ``visualize``: a set's pictures (rule ``visualize``), or a dataset's accuracy plot (rule
  ``accuracy``);
- ``export``: a set as a network trains on it, for other code (PNGs, tensors, manifest);
- ``crossarch``: the sets on other architectures; ``nas`` / ``nas_merge``: the NAS proxy search;
- ``report``: the summary of the whole matrix.

The machinery they share lives in :mod:`stages.common`. Commands do not import each other.
This file imports nothing.
"""
