"""Built-in YAML configs, installed as the package ``datascale.configs``.

A regular package (not a namespace one) so that ``importlib.resources``
returns a plain folder path after a non-editable install.
"""
