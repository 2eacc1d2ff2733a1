"""The commands: one module per ``conf/<name>.yaml``, the only floor that reads a command's options.

=================  ==========================================  ======================  ==============================
console script     same as                                     config                  module
=================  ==========================================  ======================  ==============================
lungnet-train      ``python train.py``                         ``conf/train.yaml``     `lungnet.commands.train`
lungnet-evaluate   ``python evaluate.py``                      ``conf/evaluate.yaml``  `lungnet.commands.evaluate`
lungnet-predict    ``python predict.py``                       ``conf/predict.yaml``   `lungnet.commands.predict`
lungnet-compare    ``python compare.py``                       ``conf/compare.yaml``   `lungnet.commands.compare`
lungnet-app        ``python -m lungnet.app``                   ``conf/app.yaml``       `lungnet.commands.app`
lungnet-export     ``python -m lungnet.export``                ``conf/export.yaml``    `lungnet.commands.export`
lungnet-explain    ``python -m lungnet.explain``               ``conf/explain.yaml``   `lungnet.commands.explain`
lungnet-crossval   ``python -m lungnet.evaluation.crossval``   ``conf/crossval.yaml``  `lungnet.commands.crossval`
lungnet-audit      ``python -m lungnet.audit``                 ``conf/audit.yaml``     `lungnet.commands.audit`
lungnet-transfer   ``python -m lungnet.evaluation.transfer``   ``conf/transfer.yaml``  `lungnet.commands.transfer`
lungnet-loso       ``python -m lungnet.commands.loso``         ``conf/loso.yaml``      `lungnet.commands.loso`
lungnet-prepare    ``python -m lungnet.prepare``               ``conf/prepare.yaml``   `lungnet.commands.prepare`
=================  ==========================================  ======================  ==============================

Each command module is a Hydra app (`lungnet.commands.wrapper.hydra_app`): its ``main`` is the console script, its
``main.task(cfg, run_dir)`` the plain function for tests and notebooks. A command module imports its task's library
inside the task, so ``--help`` and a refused command line answer before torch loads. The ``python -m`` forms are
doorways (``lungnet/app.py``, ``lungnet/export.py``, ...): a ``__main__`` block that calls the command's ``main``.
Nothing in the package imports this floor.
"""
