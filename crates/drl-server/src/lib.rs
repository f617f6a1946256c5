//! The `drl` node (skeleton; filled in by the server work).
