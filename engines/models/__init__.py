"""Models: the local store, the curated catalog, downloads and Hub access."""
