//! `evi-install render [--check]`: print the config, or compare it with the installed one.

use anyhow::Result;

use crate::cli::RenderArgs;
use crate::exit;
use crate::fsutil::read_optional;
use crate::plan::unified_diff;
use crate::render::valkey_conf;
use crate::settings::Settings;
use crate::ui::Ui;

pub fn run(settings: &Settings, args: &RenderArgs, ui: &Ui) -> Result<u8> {
    let conf = valkey_conf(settings)?;
    if !args.check {
        print!("{conf}");
        return Ok(exit::OK);
    }
    let path = settings.config_path();
    match read_optional(&path)? {
        Some(installed) if installed == conf => {
            ui.info(&format!("{} matches the settings.", path.display()));
            Ok(exit::OK)
        }
        Some(installed) => {
            ui.result(&format!("{} differs from the settings:", path.display()));
            ui.result(unified_diff(&installed, &conf).trim_end());
            ui.result("Run `evi-install up` to install the rendered config.");
            Ok(exit::ERROR)
        }
        None => {
            ui.result(&format!(
                "{} does not exist; run `evi-install up` to install it.",
                path.display()
            ));
            Ok(exit::ERROR)
        }
    }
}
