def planned(read):
    """Reads a plan of (offset, length), as nbd.Client.read_ahead does."""
    return lambda plan: (read(offset, length) for offset, length in plan)
