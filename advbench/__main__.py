"""``python -m advbench``: the same entry point as the ``advbench`` console script."""
from advbench.main import main

if __name__ == "__main__":
    main()
