"""`python -m pfdeploy` runs the CLI."""

import sys

from pfdeploy.cli import main

sys.exit(main())
