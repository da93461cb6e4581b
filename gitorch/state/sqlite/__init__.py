"""The SQLite backend of the state store (the embedded default): one database in the state
directory, one repository per concern over it (see :mod:`gitorch.state.repositories`)."""
