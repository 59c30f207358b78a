"""Use cases the pages and the CLI call: analysing and saving uploads, reading statistics. The one place where
the domain packages are strung together; pages never reach the storage or the model directly."""
