"""The ``offramp`` command line: the top layer. Nothing outside this package imports it.

``main`` builds the parser; each command lives in its own module (``train``, ``evaluate``, ``compare``,
``gradients``, ``predict``, ``calibrate``, ``bench``, ``serve``) with ``HELP``, ``add_parser`` and ``run``;
shared argument groups are in :mod:`offramp.cli.args`. Heavy imports stay inside ``run`` so
``offramp --help`` never loads torch.
"""

from .main import main

__all__ = ["main"]
