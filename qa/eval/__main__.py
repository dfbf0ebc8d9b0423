import sys

from qa.eval.cli import main

sys.exit(main())
