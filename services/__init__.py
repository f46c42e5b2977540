"""magsrl: a magnifying glass for multimodal LLMs.

The import package maps onto the repository's folders: ``magsrl.<service>`` is
``services/<service>/`` and ``magsrl.proto`` is ``proto/`` (see pyproject.toml).
"""

__version__ = "0.1.0"
