"""nlpflow's built-in plugins. Each module is registered through the ``nlpflow`` entry-point group in
pyproject.toml, exactly as a third-party package registers its own."""
