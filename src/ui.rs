//! Everything evi-install prints goes through `Ui`, which applies `-q`/`-v`,
//! colour (only on a terminal, never with `NO_COLOR`) and secret redaction.

use std::io::{IsTerminal, Write};

use crate::secret::redact;

#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub quiet: bool,
    pub verbose: u8,
    pub color: bool,
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

    pub fn warn(&self, text: &str) {
        eprintln!(
            "{}",
            redact(&format!("{} {text}", self.paint(Style::Yellow, "warning:")))
        );
    }
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
    eprintln!("{label} {}", redact(message));
}
