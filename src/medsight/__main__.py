"""Allow ``python -m medsight``."""

from medsight.cli.main import main

if __name__ == "__main__":
    main()
