"""Sub-commands of ``hpa-kit``; each module exposes ``register(subparsers)`` (see hpa_kit.cli)."""
