"""The training dashboard server behind ``alpha serve``.

``protocol`` validates the ingest messages of the reference protocol, ``store`` keeps them in one
SQLite file, ``live`` fans them out to browsers over SSE, ``uploads`` receives chunked checkpoint
uploads, ``views`` shapes data for the pages, and ``app`` wires it all into a FastAPI app.
"""
