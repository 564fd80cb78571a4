import pbr.version

__version__ = pbr.version.VersionInfo('vmsnap-driver').version_string()
