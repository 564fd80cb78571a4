"""``vmsnap`` commands about snapshot images in Glance.

An image argument is a name or an id, as the ``openstack`` client takes
one; a name must be one image's.
"""

import argparse
import os
import shutil
import stat
import sys

from cliff import command
from cliff import lister
from cliff import show

from vmsnap_driver import archive
from vmsnap_driver import chains
from vmsnap_driver.cmd import common
from vmsnap_driver import exception
from vmsnap_driver import journal
from vmsnap_driver import verify

# ``vmsnap verify``'s exit codes: an image that fails a check, and a
# verification that could not be carried out (no such image, no Glance).
MISMATCH = 1
NOT_VERIFIED = 2


class Verify(lister.Lister):
    """Check a snapshot image against the content digest it carries.

    The image is downloaded and read back; exits 1 on a mismatch, 2 when
    it cannot be checked.
    """

    verdict = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('image', help='Image name or id.')
        common.add_progress_option(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        images = common.images()
        self.verdict = verify.verify(
            images, images.find(parsed_args.image)['id'],
            workdir=common.snapshots_directory(),
            show_progress=not parsed_args.no_progress)
        rows = [('ok' if check.ok else 'FAIL', check.name, check.detail)
                for check in self.verdict.checks]
        rows.append(('ok' if self.verdict.ok else 'FAIL', 'verdict',
                     'image %s: %s' % (self.verdict.image_id,
                                       'VERIFIED' if self.verdict.ok
                                       else 'MISMATCH')))
        return ('result', 'check', 'detail'), rows

    def run(self, parsed_args: argparse.Namespace) -> int:
        try:
            super().run(parsed_args)
        except Exception as e:
            self.app.LOG.error(e, exc_info=self.app.options.debug)
            return NOT_VERIFIED
        return 0 if self.verdict.ok else MISMATCH


class Flatten(show.ShowOne):
    """Write one point of a snapshot chain as one full, bootable image.

    The point is a delta and the images under it.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('image', help='Image name or id.')
        parser.add_argument('--name', required=True,
                            help='Name of the new image.')
        common.add_progress_option(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        images = common.images()
        workdir = common.workdir()
        try:
            chain = chains.lineage(images, images.find(parsed_args.image))
            bar = common.progress_bar(
                parsed_args, sum(i.get('size') or 0 for i in chain),
                'downloading')
            image_id = chains.flatten(images, chain, parsed_args.name,
                                      workdir, bar.update)
            bar.finish()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        image = images.get(image_id)
        fields = ('id', 'name', 'size', chains.FLATTENED_FROM_PROPERTY)
        return fields, [image.get(key) for key in fields]


class Export(command.Command):
    """Export a snapshot as one portable OVA file.

    The archive holds its disks, memory state, domain XML and properties;
    '--output -' writes it to standard output.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('image', help='Image name or id.')
        parser.add_argument('--output', required=True, metavar='FILE',
                            help='The OVA file to write, or - for standard '
                                 'output.')
        common.add_progress_option(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        output = parsed_args.output
        stream = output != '-' and _is_stream(output)
        if output == '-' and self.app.stdout.isatty():
            raise exception.ExportRefused(
                image_id=parsed_args.image,
                reason='standard output is a terminal: redirect it, or '
                       'give --output FILE')
        workdir = common.workdir()
        try:
            images = common.images()
            export = archive.plan_export(
                images, images.find(parsed_args.image)['id'], workdir)
            bar = common.progress_bar(parsed_args, export.size(),
                                      'exporting')
            if output == '-':
                export.write(self.app.stdout.buffer, bar.update)
                self.app.stdout.buffer.flush()
            elif stream:
                with open(output, 'wb') as out:
                    export.write(out, bar.update)
            else:
                # Whole under its name or not there: it holds guest disks
                # and memory, so it is created 0600 whoever runs this.
                journal.write_file(os.path.realpath(output),
                                   lambda out: export.write(out, bar.update))
            bar.finish()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if output != '-' and not stream:
            print('%s: %d bytes' % (output, os.path.getsize(output)),
                  file=self.app.stderr)
        return 0


def _is_stream(path: str) -> bool:
    """A device or a pipe (/dev/stdout, a FIFO): written as it is."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


class Import(lister.Lister):
    """Import an exported snapshot (OVA) as images, and a guest.

    With --define the guest is defined on this host too (and started with
    --start); lists what it created.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('archive', help='The OVA file.')
        parser.add_argument('--define', action='store_true',
                            help='Also define the guest from the archived '
                                 'domain XML.')
        parser.add_argument('--disk-dir', metavar='DIR',
                            help='Where --define writes the guest\'s '
                                 'disks.')
        parser.add_argument('--start', action='store_true',
                            help='Start the defined guest: it resumes from '
                                 'the archived memory state, or boots '
                                 'without one.')
        parser.add_argument('--name', dest='new_name',
                            help='Define the guest under this name, with a '
                                 'new UUID (default: the archived name and '
                                 'UUID).')
        common.add_progress_option(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        if (parsed_args.start or parsed_args.disk_dir
                or parsed_args.new_name) and not parsed_args.define:
            raise SystemExit(self._usage('--disk-dir, --start and --name '
                                         'go with --define'))
        if parsed_args.define and not parsed_args.disk_dir:
            raise SystemExit(self._usage('--define needs --disk-dir DIR'))
        define = (archive.DefineRequest(parsed_args.disk_dir,
                                        parsed_args.start,
                                        parsed_args.new_name)
                  if parsed_args.define else None)
        # The archive is read to be proven, then again to be imported (and
        # its disks a third time to be defined).
        passes = 3 if define else 2
        bar = common.progress_bar(
            parsed_args, passes * os.path.getsize(parsed_args.archive),
            'importing')
        imported = common.load_driver().import_archive(parsed_args.archive,
                                                       define, bar.update)
        bar.finish()
        rows = [(what, image_id, 'image')
                for what, image_id in imported.images.items()]
        if imported.guest:
            rows.append(('domain', imported.guest.uuid, '%s: %s' % (
                imported.guest.name,
                'resumed from its memory state' if imported.resumed
                else imported.guest.state())))
        return ('what', 'id', 'detail'), rows

    def _usage(self, message: str) -> int:
        print('ERROR: %s' % message, file=sys.stderr)
        return 2
