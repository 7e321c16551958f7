# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m pasta``: run as pasta.  The ``passt`` command (or any name
not ending in "pasta") runs the same program in passt mode."""

import sys

from pasta.passt import main

if __name__ == "__main__":
    sys.exit(main())
