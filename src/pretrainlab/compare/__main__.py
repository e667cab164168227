"""``python -m pretrainlab.compare``: the ``pretrainlab-compare`` command."""

import sys

from pretrainlab.compare.report import main

sys.exit(main())
