import sys

from migd.cli import main

sys.exit(main())
