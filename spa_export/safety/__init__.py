"""Safety nets every floor stands on: typed errors, input validation, atomic publishing, ownership
of output folders, signals, memory and progress on stderr.

What it holds: ``errors`` (the typed errors and their exit codes), ``validate`` (option values
checked once, named as the user wrote them), ``ownership`` (what an output folder may replace),
``publish`` (write into a staging folder, then move whole), ``interrupts`` (SIGINT/SIGTERM become
"nothing was written"), ``memory`` (hand memory back between stages, measure the peak) and
``progress`` (one line per stage on stderr).

Imports no torch: the runtime half uses it on devices without torch.

May import: (nothing of spa_export but ``__version__``)
"""
