"""The ledgerflow coordinator: durable ledger store, run API, dispatch.

Its pieces land package by package: ``api/`` (the gRPC edge), ``store/`` (SQL),
``dispatch/``. The pure ledger logic it builds on is :mod:`ledgerflow.ledger`.
"""
