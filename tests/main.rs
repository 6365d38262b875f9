//! The integration tests: one binary, one module per feature.
//!
//! `cli` needs nothing but the built binary. `e2e` needs the real Podman
//! service and the local Valkey image that `scripts/test.sh` provides; without
//! them those tests fail loudly, naming the command to run.

mod backup;
mod catalogue;
mod cli;
mod clients;
mod e2e;
mod export;
mod hardening;
mod kube_play;
mod permissions;
mod pressure;
mod reboot;
mod replicas;
mod rotation;
mod support;
