"""``vmsnap``: the operator's commands, on cliff as the ``openstack`` client.

Each command is a cliff command found through the ``vmsnap.cli`` entry
points (``server_commands``, ``image_commands``), so records come out as
``-f table|json|value|...`` like the client's.  cliff's own logging set-up
is replaced by oslo.log's, configured from the same files as the service:
the global options are only the few an operator types (``--config-file``,
``--config-dir``, ``--log-file``, ``--debug``); every other logging option
stays reachable in the configuration file.
"""

import argparse
import logging
import sys
from typing import List, Optional

from cliff import app
from cliff import commandmanager

import vmsnap_driver
from vmsnap_driver import config

CONF = config.CONF


class VmsnapApp(app.App):
    NAME = 'vmsnap'

    def __init__(self) -> None:
        super().__init__(
            description='Snapshots of libvirt guests in Glance: verify, '
                        'revert, flatten, export and import them.',
            version=vmsnap_driver.__version__,
            command_manager=commandmanager.CommandManager('vmsnap.cli'),
            deferred_help=True)
        # Where cliff reports a failed command: one plain line, not an
        # oslo.log record (this logger is outside logging's tree).
        self.LOG = logging.Logger('vmsnap')
        handler = logging.StreamHandler(self.stderr)
        handler.setFormatter(logging.Formatter('ERROR: %(message)s'))
        self.LOG.addHandler(handler)

    def build_option_parser(self, description: Optional[str],
                            version: Optional[str],
                            argparse_kwargs: Optional[dict] = None
                            ) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=description,
                                         add_help=False,
                                         allow_abbrev=False,
                                         **(argparse_kwargs or {}))
        # Global options may come after the command: they are parsed out
        # of the whole line first, so none may abbreviate another's name.
        parser.add_argument('--version', action='version',
                            version='%s %s' % (self.NAME, version))
        parser.add_argument(
            '--config-file', action='append', metavar='PATH',
            help='A configuration file, as vmsnap-compute reads it; may be '
                 'repeated (default: /etc/vmsnap/vmsnap.conf if it '
                 'exists).')
        parser.add_argument('--config-dir', metavar='DIR',
                            help='A directory of *.conf files, read after '
                                 'the files.')
        parser.add_argument('--log-file', metavar='PATH',
                            help='Log there instead of standard error.')
        parser.add_argument('--debug', action='store_true',
                            help='Log debug messages; show tracebacks on '
                                 'errors.')
        parser.add_argument('-h', '--help', dest='deferred_help',
                            action='store_true',
                            help='Show this help and exit.')
        return parser

    def configure_logging(self) -> None:
        """oslo.log does it, once the configuration files are read."""

    def initialize_app(self, argv: List[str]) -> None:
        options = self.options
        if options.deferred_help or argv[:1] in (['help'], ['complete']):
            return      # help needs no configuration, nor the right to read it
        args = []
        for path in options.config_file or []:
            args += ['--config-file', path]
        if options.config_dir:
            args += ['--config-dir', options.config_dir]
        if options.log_file:
            args += ['--log-file', options.log_file]
        if options.debug:
            args.append('--debug')
        # Logs go to standard error unless a file is named; never to
        # standard output, which carries the results.
        CONF.set_default('use_stderr', not options.log_file)
        config.parse_args(args, stdout_is_output=True)

    def interact(self) -> None:
        """No interactive shell: a bare ``vmsnap`` lists the commands."""
        self.run_subcommand(['help'])


def main(argv: Optional[List[str]] = None) -> int:
    return VmsnapApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())
