"""The ``spa-export`` command line: thin click commands over the Python API.

Each command imports what it needs inside its function, so ``--help`` is instant and the runtime
commands (``bench``, ``engine``) run without torch.

May import: spa_export.release, spa_export.pack, spa_export.stages, spa_export.report, spa_export.nets, spa_export.runtime, spa_export.spa, spa_export.safety
"""

from __future__ import annotations


def run() -> None:
    """The console script: Ctrl-C while the CLI itself is still being imported exits 130 quietly too."""
    try:
        from spa_export.cli.main import main
    except KeyboardInterrupt:
        import os
        import sys

        sys.stderr.write("interrupted: nothing was written\n")
        sys.stderr.flush()
        os._exit(130)
    main()
