"""The plugin contract: every shape, record, error and helper a plugin of any kind uses.

A leaf: nothing here imports the config loader, the engine or the CLI. Plugins import these names from
:mod:`nlpflow`, which re-exports them; the modules below are where they are defined, not where to import from.
"""
