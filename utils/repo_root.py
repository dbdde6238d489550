"""Lets the scripts in ``utils/`` run as ``python utils/<script>.py``.

Such a script starts with ``utils/`` at the head of ``sys.path``, where this
module is found; importing it puts the repository root there instead, so
``import utils...`` resolves and nothing in ``utils/`` shadows a top-level name.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if sys.path and os.path.abspath(sys.path[0]) == os.path.join(ROOT, "utils"):
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)
