"""Symbiogenesis: an evolutionary search over the FFN activation function.

``graph`` (composed activations: JSON trees, names, evaluation), ``mutate`` (the six operators,
simplification, crossover), ``config`` (the symbio JSON config), ``cusum`` (change detectors),
``report`` (the three search artifacts) and ``search`` (the generation loop that drives the
trainer's snapshot / restore / train_steps / evaluate primitives).
"""
