//! `drl` (skeleton; filled in by the server work).
fn main() {}
