

def builtin_policies() -> list[str]:
    """The names of the policies shipped here (``default`` first): what ``--policy NAME``
    takes besides a file. Read from this folder, so a new policy file is listed everywhere
    (``--help``, error messages) without another edit."""
    from importlib import resources

    names = sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))
    return sorted(names, key=lambda n: n != "default")
