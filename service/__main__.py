"""``python -m service`` is the ``forecastd`` command."""

import sys

from service.cli import main

sys.exit(main())
