"""``spa-export`` with a pause at one point of the build, for the interruption tests.

The shipped example builds in about three seconds, so a signal sent "during
verify" or "4 s after start" can, on a busy machine, land after the output was
published, and the test would then check something else than it means to.
This wrapper runs the real CLI in a real process, with one pause added:

* ``SPA_EXPORT_TEST_HOLD=before-publish``: sleep just before publication, so
  every signal sent at or after a stage line lands in the real work of that
  stage or in the pause, never after the output exists;
* ``SPA_EXPORT_TEST_HOLD=after-publish``: once the output is published, print
  ``held: published`` on stderr and sleep, so a signal lands after publication.

Nothing of spa-export changes except the function that is wrapped.
"""

from __future__ import annotations

import os
import sys
import time

from spa_export.cli import build_cmd
from spa_export.cli.main import main
from spa_export.stages import pipeline

HOLD_S = 120.0
PUBLISHED = "held: published"


def _before_publish(real):
    def held(*args, **kwargs):
        time.sleep(HOLD_S)
        return real(*args, **kwargs)
    return held


def _after_publish(real):
    def held(*args, **kwargs):
        print(PUBLISHED, file=sys.stderr, flush=True)
        time.sleep(HOLD_S)
        return real(*args, **kwargs)
    return held


if __name__ == "__main__":
    hold = os.environ.get("SPA_EXPORT_TEST_HOLD", "")
    if hold == "before-publish":
        pipeline.publish_whole = _before_publish(pipeline.publish_whole)
    elif hold == "after-publish":
        build_cmd._summarise = _after_publish(build_cmd._summarise)
    else:
        sys.exit(f"held_cli: SPA_EXPORT_TEST_HOLD must be before-publish or after-publish, not {hold!r}")
    sys.argv[0] = "spa-export"
    main()
