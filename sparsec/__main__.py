import sys

from sparsec.cli import main

sys.exit(main())
