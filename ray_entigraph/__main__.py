import sys

from ray_entigraph.cli import main

sys.exit(main())
