"""pbr setup, plus the ``nova.virt.dcmigrate`` shim package.

nova-compute only loads drivers named under ``nova.virt``
(``nova.virt.driver.load_compute_driver``), so the wheel also ships
``nova/virt/dcmigrate/__init__.py``, built from
``nova_dcmigrate/virt/nova_virt_shim/``. pbr keeps only ``[files] packages``
that are directories of the source tree, hence this ``build_py`` (named in
``setup.cfg [global] commands``) that adds the package with its own source
directory. Only nova's ``nova/virt/`` directory is extended: no
``nova/__init__.py`` or ``nova/virt/__init__.py`` is shipped, and pip's
RECORD removes the shim on uninstall. Editable installs skip it, because
an editable finder for a package inside ``nova`` could shadow nova itself;
use a wheel (``tox -e nova-functional`` does) to run nova-compute.

The wheel (and an editable install) also builds the optional C extension
``nova_dcmigrate.stream._speedups`` (the agents' per-page work; gcc,
``python3-dev`` and ``libxxhash-dev`` from bindep.txt).  It is optional: a
failed build logs a warning and the agents use the pure-Python code
(``nova_dcmigrate/stream/fastpath.py``).
"""

import os
import sys

import setuptools
from setuptools.command import build_py

SHIM_PACKAGE = 'nova.virt.dcmigrate'
SHIM_SOURCE = os.path.join('nova_dcmigrate', 'virt', 'nova_virt_shim')
#: The tempest plugin: folder tempest_plugin/, importable package name
#: nova_dcmigrate_tempest_plugin (no clash with other projects' plugins).
TEMPEST_PACKAGE = 'nova_dcmigrate_tempest_plugin'
TEMPEST_SOURCE = 'tempest_plugin'


def _tempest_packages():
    """{package: directory} of the plugin and its subpackages."""
    found = {TEMPEST_PACKAGE: TEMPEST_SOURCE}
    for sub in setuptools.find_packages(TEMPEST_SOURCE):
        found['%s.%s' % (TEMPEST_PACKAGE, sub)] = os.path.join(
            TEMPEST_SOURCE, *sub.split('.'))
    return found


SPEEDUPS = setuptools.Extension(
    'nova_dcmigrate.stream._speedups',
    sources=['nova_dcmigrate/stream/_speedups.c'],
    extra_compile_args=['-O3', '-std=gnu11'],
    # A missing compiler or header must not fail the install.
    optional=True)


class BuildPy(build_py.build_py):
    """build_py that adds the nova.virt.dcmigrate shim to wheels."""

    command_name = 'build_py'

    def finalize_options(self):
        super().finalize_options()
        self.packages = list(self.packages or [])
        self.package_dir = dict(self.package_dir or {})
        for package, source in _tempest_packages().items():
            self.packages.append(package)
            self.package_dir[package] = source
        if getattr(self, 'editable_mode', False):
            return
        self.packages.append(SHIM_PACKAGE)
        self.package_dir[SHIM_PACKAGE] = SHIM_SOURCE


if __name__ == '__main__':
    # setup.cfg names setup.BuildPy: make this file importable as "setup".
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    setuptools.setup(setup_requires=['pbr>=6.0.0'], pbr=True,
                     ext_modules=[SPEEDUPS])
