"""``python -m crunchql`` is the ``crunchql`` console script."""

from crunchql.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
