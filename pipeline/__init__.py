"""nlpflow core: plugin registry, YAML pipelines, streaming runner, model stage, reports.

Plugins import the hook marker from here::

    from pipeline import hookimpl
"""

from importlib.metadata import PackageNotFoundError, version

from pipeline.hookspecs import hookimpl

try:
    __version__ = version("nlpflow")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["hookimpl", "__version__"]
