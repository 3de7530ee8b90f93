"""Merging fine-tunes into mixtures of experts: Mixtral layout, routers, PPL routing, sequence and heterogeneous MoE."""
