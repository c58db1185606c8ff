"""crunchql: a GraphQL API for numba-compiled compute jobs.

The project's top-level folders (``schema/``, ``resolvers/``, ``compute/``, ``db/``, ...)
are this package's subpackages: ``crunchql/<folder>`` is a symbolic link to ``../<folder>``,
so a checkout, an editable install, mypy and a built wheel all see one import namespace,
``crunchql.<folder>``, and ``pip install`` puts only ``crunchql`` into site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crunchql")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
