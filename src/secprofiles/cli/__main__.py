"""``python -m secprofiles.cli``: the ``secprofiles`` command."""

import sys

from secprofiles.cli.main import main

sys.exit(main())
