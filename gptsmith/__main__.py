import sys

from gptsmith.cli import main

sys.exit(main())
