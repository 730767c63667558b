"""DeepSpeed multi-label pretraining (``datascale pretrain``).

Modules: ``config`` (the schema), ``loop`` (the one training loop),
``checkpoint`` (DeepSpeed checkpoints with each rank's data position and RNG
state), ``map_metric`` (mAP@100 on the dense eval set), ``cli``.
"""
