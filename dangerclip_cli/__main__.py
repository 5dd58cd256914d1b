import sys

from dangerclip_cli.main import main

sys.exit(main())
