"""`flashpipe ui` and `flashpipe report`: server-rendered pages over a store opened read-only."""
