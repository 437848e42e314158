"""The tutorials run in the test suite (nbmake) on reduced sizes: the notebooks read MUMATCH_TUTORIAL_FAST."""

import os

os.environ.setdefault("MUMATCH_TUTORIAL_FAST", "1")
