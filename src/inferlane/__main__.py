import sys

from inferlane.cli.main import main

sys.exit(main())
