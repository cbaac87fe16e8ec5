"""pipelines.yaml in three steps: the schema (:mod:`.schema`), loading with positions and overrides
(:mod:`.loader`), and resolving names against the plugin registry (:mod:`.resolve`)."""
