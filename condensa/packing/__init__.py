"""The packed weights format, shared by the footprint metric (exact size, without writing) and the
exporter (writes and reads it): :mod:`.layout` (per-tensor layouts, plan, encode, decode) and
:mod:`.entropy` (canonical Huffman + Golomb streams). It sits below both ``metrics`` and
``export`` so that neither imports the other's layer.
"""
