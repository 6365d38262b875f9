//! `backup`, `backup --verify` and `restore`: the archive, its manifest, the
//! scripts that run in containers, and the container runs themselves.

pub mod archive;
pub mod jobs;
pub mod manifest;
pub mod scripts;
