"""An LLM (or an embedding model) as a teacher: annotate, generate, explain, and teach in a loop.

Layers, bottom up: ``labels`` (label set, verbalizers, answer parsing) and ``cache`` (SQLite request cache) know nothing
of models; ``backend`` is the one interface the three teacher backends implement (``served`` over HTTP, ``local`` in
process, ``embedding``); ``annotate``, ``generate``, ``rationales`` and ``agreement`` are jobs over a backend.
"""
