import sys

from . import main

if __name__ == "__main__":  # importing this module (to check what it loads) must not start a server
    sys.exit(main())
