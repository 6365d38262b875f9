//! evi-install: provisions the EVI state service (Valkey 8) with Podman.
//!
//! `main` parses the command line, runs one command, prints any error once
//! (on one line, secrets redacted) and maps it to an exit code.

mod acl;
mod addressing;
mod apply;
mod backup;
mod boot;
mod cli;
mod commands;
mod desired;
mod engine;
mod exit;
mod fsutil;
mod interrupt;
mod kubernetes;
mod live_config;
mod lock;
mod model;
mod plan;
mod plan_view;
mod reach;
mod render;
mod restart_cost;
mod rotation;
mod saved_plan;
mod secret;
mod settings;
mod size;
mod timeouts;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            ui::print_error(&format!("{e:#}"));
            match e.downcast_ref::<interrupt::Interrupted>() {
                Some(interrupted) => ExitCode::from(interrupted.exit_code()),
                None => ExitCode::from(exit::ERROR),
            }
        }
    }
}
