"""Network helpers the build's stages share, with torch.

What it holds: ``arch`` (architecture names such as ``torchvision:resnet18`` -> a network, and
submodule access), ``checkpoint`` (base checkpoints read without running code), ``arrays``
(``.npz`` inputs read against the network's inputs), ``modcopy`` (the copy a stage changes
instead of the caller's network), ``finite`` and ``threads`` (finiteness at the cost of a sum;
byte-stable results on any core count), ``attention`` (the attention module a pruned network
holds, reading ``nn.MultiheadAttention``'s projections, and the fused-qkv attention classes whose
head geometry a copy can change), ``blur`` (timm's blur pool, a per-channel filter), ``metrics``
and ``footprint`` (parameters, MACs and activation memory).

May import: spa_export.runtime, spa_export.spa, spa_export.safety
"""
