"""`sozu`: start the proxy, or check a configuration file.

Usage:
  sozu start -c FILE
  sozu config check -c FILE
  sozu provider etcd -c FILE
  sozu (-h | --help)
  sozu --version

Options:
  -c FILE, --config=FILE   The configuration file (TOML).
  -h --help                Show this help.
  --version                Show the version.

Start-up reads and validates the configuration (a bad file exits 1 with one message naming the
file and the key), binds every listener (or takes them over from the previous master during an
upgrade), forks the workers and serves the command socket until stopped.
"""
from __future__ import annotations

import logging
import sys

from docopt import DocoptExit, docopt

from sozu import __version__

log = logging.getLogger("sozu.master")


def main(argv: list[str] | None = None) -> int:
    try:
        args = docopt(__doc__, argv=argv, version=f"sozu {__version__}")
    except DocoptExit as usage:
        print(usage, file=sys.stderr)
        return 1
    from sozu import config as config_module
    try:
        if args["config"] and args["check"]:
            print(config_module.check(args["--config"]))
            return 0
        config = config_module.load(args["--config"])
    except config_module.ConfigError as error:
        print(f"sozu: {error}", file=sys.stderr)
        return 1
    if args["provider"]:
        if config.provider.etcd is None:
            print(f"sozu: {args['--config']}: no [provider.etcd] section", file=sys.stderr)
            return 1
        from sozu import logs
        from sozu.provider import etcd
        logs.setup(config.log_level, config.log_target, "off", tag="PROVIDER")
        return etcd.run(config)
    from sozu.startup import start
    return start(config)


if __name__ == "__main__":
    sys.exit(main())
