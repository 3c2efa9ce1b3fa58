"""alpha: train small GPT language models on chat or text corpora.

The package is organised by job: ``data`` (tokenizer, corpus, token cache), ``model`` (the GPT and
its activations), ``train`` (the loop and its components), ``sinks`` (where events go), ``symbio``
(activation search), ``health`` (run diagnosis), ``server`` (dashboard) and ``cloud`` (launchers).
"""

__version__ = "0.1.0"
