"""Launching training on a GCP GPU instance or any SSH host (``scripts/gcp_train.py``).

``cli`` parses and dispatches, ``options`` holds the flags and the preflight, ``launcher`` runs
the provider-neutral pipeline, ``gcp`` and ``ssh`` are the providers, ``machines`` maps machine
types to GPUs, ``shell`` runs (or prints) local commands, and ``remote`` is the helper that runs
on the training host. All of it is standard library only.
"""
