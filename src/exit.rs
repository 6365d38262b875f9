//! Exit codes, as documented in the README and `--help`.

pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
/// `--detailed-exitcode`: changes are pending.
pub const CHANGES: u8 = 2;
/// Bad command line (sysexits' EX_USAGE).
pub const USAGE: u8 = 64;
