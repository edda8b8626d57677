"""`python -m rmtrain` (and `accelerate launch -m rmtrain`) run the CLI."""

import sys

from rmtrain.cli import main

sys.exit(main())
