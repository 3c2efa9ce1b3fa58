"""Run health: the five failure signs of a training run (crash, gradient instability, overfitting,
plateau, symbio stagnation), checked offline by ``alpha diagnose`` and live by the watchdog sink.

``history`` folds step records and events into a compact ``RunHistory``; ``checks`` are pure
functions from a history to findings; ``records`` reads run directories, metrics.jsonl files and
train logs; ``report`` renders findings; ``watchdog`` runs the same checks inside ``alpha train``.
"""
