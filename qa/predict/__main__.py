import sys

from qa.predict.cli import main

sys.exit(main())
