"""`python -m distillkit_scd …` and `accelerate launch -m distillkit_scd …`."""

import sys

from distillkit_scd.cli import main

sys.exit(main())
