//! Everything evi-install prints goes through `Ui`, which applies `-q`/`-v`,
//! colour (only on a terminal, never with `NO_COLOR`) and secret redaction.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::secret::redact;

#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub quiet: bool,
    pub verbose: u8,
    pub color: bool,
    /// stdout is a terminal: spinners are drawn only then.
    pub tty: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Style {
    Green,
    Yellow,
    Red,
    Dim,
}

impl Ui {
    pub fn new(quiet: bool, verbose: u8) -> Ui {
        let tty = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Ui {
            quiet,
            verbose,
            color: tty && !no_color,
            tty,
        }
    }

    /// Prints nothing but results: for tests of code that reports progress.
    #[cfg(test)]
    pub fn silent() -> Ui {
        Ui {
            quiet: true,
            verbose: 0,
            color: false,
            tty: false,
        }
    }

    /// Wraps `text` in an ANSI style when colour is on.
    pub fn paint(&self, style: Style, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match style {
            Style::Green => "32",
            Style::Yellow => "33",
            Style::Red => "31",
            Style::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// Progress and notes: hidden by `-q`.
    pub fn info(&self, text: &str) {
        if !self.quiet {
            print_out(text);
        }
    }

    /// Results (plans, rendered files, summaries): always printed.
    pub fn result(&self, text: &str) {
        print_out(text);
    }

    /// Draws a spinner with `label` and the time spent, until the returned
    /// guard is dropped (it then erases its line).
    pub fn spinner(&self, label: &str) -> Spinner {
        let bar = self.styled(
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout()),
            ProgressStyle::with_template("  {spinner} {msg} ({elapsed})")
                .map(|s| s.tick_chars("|/-\\ ")),
            label,
        );
        if !bar.is_hidden() {
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
        }
        Spinner(bar)
    }

    /// A bar of the bytes done out of `total`.
    pub fn byte_bar(&self, total: u64, label: &str) -> ProgressBar {
        self.styled(
            ProgressBar::new(total),
            ProgressStyle::with_template("  {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}"),
            label,
        )
    }

    /// A bar of the keys done, drawn only once its caller knows the total
    /// (`set_length`, then `set_draw_target`): hidden from the start, since
    /// setting its message would already draw it.
    pub fn key_bar(&self, label: &str) -> ProgressBar {
        self.styled(
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden()),
            ProgressStyle::with_template("  {msg} {bar:30} {human_pos}/{human_len} keys {per_sec}"),
            label,
        )
    }

    /// `bar` in `style` with `label`, cleared when dropped, on every way out;
    /// a hidden bar when stdout is not a terminal and with `-q`.
    fn styled(
        &self,
        bar: ProgressBar,
        style: Result<ProgressStyle, indicatif::style::TemplateError>,
        label: &str,
    ) -> ProgressBar {
        if !self.tty || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = bar.with_finish(indicatif::ProgressFinish::AndClear);
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_message(label.to_string());
        bar
    }

    pub fn warn(&self, text: &str) {
        print_err(&redact(&format!(
            "{} {text}",
            self.paint(Style::Yellow, "warning:")
        )));
    }
}

/// A closed stderr (its reader killed) is not worth a panic either: the exit
/// code must still say what happened.
fn print_err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = writeln!(out, "{}", redact(text));
    let _ = out.flush();
}

/// Prints an error the one way every error is printed.
pub fn print_error(message: &str) {
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let label = if color {
        "\x1b[31merror:\x1b[0m"
    } else {
        "error:"
    };
    print_err(&format!("{label} {}", redact(message)));
}

/// Stops and erases its spinner when dropped.
pub struct Spinner(ProgressBar);

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
