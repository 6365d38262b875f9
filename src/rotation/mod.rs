//! Password rotation with no refused client and no restart of evi-state.
//!
//! Valkey lets one user hold several passwords, and changes them at run time
//! (`ACL SETUSER default #<sha256>`); a connection already authenticated stays
//! so when its password is later removed (<https://valkey.io/commands/acl-setuser/>).
//! evi-state keeps its users in an ACL file (`aclfile` in valkey.conf), and each
//! change is written there with `ACL SAVE` before the next step, so what the
//! server accepts survives a restart at any moment.
//!
//! The steps: new secrets; a helper container (`evi-rotate`, in evi-state's
//! network namespace, mounting the admin secret and both generations'
//! passwords) adds the new password; the clients move to the new URL; the
//! helper makes the new password the only one; the old secrets go. evi-state
//! itself is never stopped, so its clients see no gap, whatever the data size.
//!
//! The password values never pass through evi-install after generation: they
//! are only in Podman secrets, read by the helper's script with shell built-ins.
//!
//! Every step can be repeated. After an interruption, the next run reads from
//! the host (secret generations, the generation label on each client) how far
//! the last one got and completes it.

mod plan;
mod run;

pub use plan::{interrupted, plan_rotation, Rotation};
pub use run::{execute, Specs};
