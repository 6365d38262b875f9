//! Everything evi-install prints goes through `Ui`, which applies `-q`/`-v`,
//! colour (only on a terminal, never with `NO_COLOR`) and secret redaction.

use std::io::{IsTerminal, Write};

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

    /// Draws a spinner with `label` until the returned guard is dropped.
    /// Nothing is drawn when stdout is not a terminal or with `-q`.
    pub fn spinner(&self, label: &str) -> Spinner {
        if !self.tty || self.quiet {
            return Spinner(None);
        }
        let label = label.to_string();
        let task = tokio::spawn(async move {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            for i in 0.. {
                print!("\r  {} {label}", FRAMES[i % FRAMES.len()]);
                let _ = std::io::stdout().flush();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Spinner(Some(task))
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
pub struct Spinner(Option<tokio::task::JoinHandle<()>>);

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            // Erase the spinner line so the next progress line starts clean.
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
        }
    }
}
