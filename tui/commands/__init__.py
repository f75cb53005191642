"""One module per group of CLI verbs; each exposes register(subparsers).

Modules import heavy libraries (torch, transformers, …) only inside their handlers.
"""
