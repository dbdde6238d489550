"""Lets the scripts in ``utils/`` and ``tools/`` run as ``python <folder>/<script>.py``.

Such a script starts with its own folder at the head of ``sys.path``, where this module
is found (``tools/repo_root.py`` is a link to this file); importing it puts the
repository root there instead, so ``import utils...`` resolves and nothing in the
script's folder shadows a top-level name. This is the project's only ``sys.path`` edit.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)
