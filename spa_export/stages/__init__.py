"""The build of one task, stage by stage; ``pipeline`` alone knows their order.

``load -> reference -> merge -> plan -> apply -> export -> verify -> [delta] -> [quantize] -> [evaluate] -> [bench] -> report``

What it holds: ``load`` (base and SPA, read and checked against each other with ``compat``),
``reference`` (the spec's masked network, built from base and SPA without any pruning code: what
every build is verified against), ``merge`` (adapter updates into the weights, on a copy),
``plan/`` (dependency groups, masks, constant channels and attention heads: a plan in original
indices), ``apply`` (the plan -> a smaller plain network), ``export`` (ONNX, checked and
simplified), ``verify`` (the ONNX file against the reference, every mismatch collected),
``delta`` (the edge layout: the verified file as a delta on the base, checked to rebuild it),
``quantize`` (the int8 network, judged and gated by what it changes against float32),
``evaluate`` (accuracy on labelled data), ``blocks`` (what SPLoPA's block masks became),
``inspect`` (what a build would remove, without building) and ``pipeline`` (the stages in order,
writing the task's folder and report).

May import: spa_export.report, spa_export.nets, spa_export.runtime, spa_export.spa, spa_export.safety
"""
