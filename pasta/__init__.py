# SPDX-License-Identifier: GPL-2.0-or-later
"""pasta and passt: user-mode networking for namespaces and VMs, in Python.

Each module is the counterpart of one file of the C implementation, with the
same name and the same function names; ``passt.main()`` is the entry point
of both commands.
"""

VERSION = "0.1.0"
