"""``python -m spa_export``: the same as the ``spa-export`` command."""

from spa_export.cli import run

if __name__ == "__main__":
    run()
