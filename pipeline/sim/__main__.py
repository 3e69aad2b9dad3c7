import sys

from pipeline.sim.cli import main

sys.exit(main())
