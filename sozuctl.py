"""sozuctl: the command-line client of the sozu reverse proxy (also installed as `sozuctl`)."""
import sys

from sozu.ctl.cli import main

sys.exit(main())
