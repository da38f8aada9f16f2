"""A release: one base, many tasks, one verified package.

What it holds: ``recipe`` (the YAML recipe, read safely and checked), ``package`` (every task of
a recipe built into one package with its manifest and summary), ``parallel`` (``-j`` workers on
disjoint CPUs), ``assemble`` (the parts of a sharded build merged into one package),
``triton`` (the Triton Inference Server layout) and ``edge`` (the edge layout: the base once,
each task as a delta).

May import: spa_export.stages, spa_export.report, spa_export.nets, spa_export.runtime, spa_export.spa, spa_export.safety
"""
