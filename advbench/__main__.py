"""``python -m advbench``: the same entry point as the ``advbench`` console script."""
from advbench.cli import main

if __name__ == "__main__":
    main()
