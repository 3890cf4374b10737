"""`python -m cli ...` is `ferry ...` (how fsd daemons and tests start ferry)."""
import sys

from cli.main import main

sys.exit(main())
