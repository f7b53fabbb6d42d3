"""vlmtune: adapt vision-language models to a domain (data -> train -> evaluate -> serve).

`import vlmtune` is cheap: heavy libraries (torch, transformers) load only in the modules that need them.
"""

__version__ = "0.1.0"
