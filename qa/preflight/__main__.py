import sys

from qa.preflight.launch import main

sys.exit(main())
