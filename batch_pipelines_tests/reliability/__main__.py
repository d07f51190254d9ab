"""``python -m batch_pipelines_tests.reliability [scenario ...]``: the reliability table (``make reliability``)."""

import sys

from batch_pipelines_tests.reliability.scenarios import main

sys.exit(main())
