"""The pipeline's machinery, shared by the commands in ``stages/`` (which hold nothing else).

By job:

- what the pipeline is: :mod:`~stages.common.contract` (every file and rule, declared once),
  :mod:`~stages.common.codedeps` (the code each rule runs), :mod:`~stages.common.params`
  (params.yaml: validation, merged sections, what each rule reads),
  :mod:`~stages.common.dvc_yaml` (dvc.yaml, generated from the contract);
- running one job: :mod:`~stages.common.runner` (arguments, logging, exit codes),
  :mod:`~stages.common.preflight` (inputs, folders and free space before any compute),
  :mod:`~stages.common.signals` (SIGTERM/SIGINT, closing what a stage opened),
  :mod:`~stages.common.recovery` (temp files that killed writes left),
  :mod:`~stages.common.locks` (one pipeline run per project whichever tool, one process per job);
- the cluster: :mod:`~stages.common.cluster` (a SLURM run that could not track its jobs stops
  before submitting anything);
- recording: :mod:`~stages.common.tracking` (MLflow, the only module that talks to it);
- shared data: :mod:`~stages.common.sets` (the proxy sets of crossarch and nas).

contract, codedeps, params, preflight and cluster are torch-free: the Snakefile imports them.
This file imports nothing, so a command depends only on the modules it uses.
"""
