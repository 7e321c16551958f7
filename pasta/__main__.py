# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m pasta``: run as pasta (or as passt, given ``--passt``)."""

import sys

from pasta.passt import main

if __name__ == "__main__":
    sys.exit(main())
