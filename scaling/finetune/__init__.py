"""Downstream fine-tuning (``datascale finetune``): ``loop`` (the one training loop
for every task and mode) and ``cli``. The tasks themselves live in
:mod:`scaling.tasks`.
"""
