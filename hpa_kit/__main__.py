import sys

from hpa_kit.cli import main

sys.exit(main())
