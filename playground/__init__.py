"""Transformer Playground: the Transformer of "Attention Is All You Need", to read, run and change.

From Python: `playground.load(checkpoint)` gives a trained model to translate with, score and look into, and
`playground.run([overrides])` trains as the command line does (playground/api.py).
"""


def __getattr__(name):
    if name in ("load", "run", "Trained"):  # imported on first use: `import playground` stays light
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'playground' has no attribute {name!r}")
