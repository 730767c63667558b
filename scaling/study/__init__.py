"""The whole study as a plan of ordinary commands (``datascale study``).

Modules: ``config`` (the study schema), ``plan`` (commands over the study's
axes, running them resumably, the study's report section), ``cli``.
"""
