"""``python -m tests.flask_suite``: see ``tests.flask_suite.runner``."""

import sys

from tests.flask_suite.runner import main

sys.exit(main())
