import sys

from clover2.cli import main

sys.exit(main())
