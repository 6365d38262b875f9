//! Ctrl-C and SIGTERM: the action in progress is finished, the rest is not
//! started, and the run exits 130 or 143 after saying what was done. A second
//! signal stops the run at once (an action may then be half done; a rerun
//! finishes it, as after a crash).
//!
//! Once `watch` has run, the signals no longer kill the process; the walkers
//! of plans (`apply`, `rotate`) call `check` between actions.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Starts listening for SIGINT and SIGTERM. Call inside the tokio runtime.
pub fn watch() {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, number) in [
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::terminate(), libc::SIGTERM),
    ] {
        if let Ok(mut stream) = signal(kind) {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    let first = RECEIVED.swap(number, Ordering::SeqCst) == 0;
                    if let Some(code) = on_signal(first, number, &mut std::io::stderr()) {
                        std::process::exit(code);
                    }
                }
            });
        }
    }
}

/// What a signal does: the first is announced, a second stops the run (the
/// exit code is returned). Never panics: with stderr gone (its reader killed)
/// a panicking `eprintln!` would end this listener, and every later signal
/// would then be ignored.
fn on_signal(first: bool, number: i32, err: &mut dyn std::io::Write) -> Option<i32> {
    if first {
        let _ = writeln!(err, "{}", first_notice(number));
        None
    } else {
        let _ = writeln!(err, "error: {}", abort_message(number));
        Some(128 + number)
    }
}

fn signal_name(number: i32) -> &'static str {
    if number == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

/// Said at once on the first signal, so that nobody waits in the dark.
fn first_notice(number: i32) -> String {
    format!(
        "{} received: finishing the action in progress, then stopping; send it again (Ctrl-C) to stop at once",
        signal_name(number)
    )
}

/// The error of a run stopped by a second signal.
fn abort_message(number: i32) -> String {
    format!(
        "interrupted again by {}: stopped at once, the action in progress may be half done; \
         run the same command again to finish it",
        signal_name(number)
    )
}

/// The run was interrupted; `done` and `not_done` describe where it stopped.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub done: Vec<String>,
    pub not_done: Vec<String>,
}

impl Interrupted {
    /// 128 + the signal number, as shells report it.
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal) as u8
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = signal_name(self.signal);
        write!(
            f,
            "interrupted by {name} after finishing the action in progress"
        )?;
        if !self.done.is_empty() {
            write!(f, "; done: {}", self.done.join(", "))?;
        }
        if !self.not_done.is_empty() {
            write!(f, "; not done: {}", self.not_done.join(", "))?;
        }
        write!(f, "; run the same command again to finish")
    }
}

impl std::error::Error for Interrupted {}

/// Fails with `Interrupted` if a signal has arrived.
pub fn check(done: &[String], not_done: &[String]) -> Result<(), Interrupted> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(Interrupted {
            signal,
            done: done.to_vec(),
            not_done: not_done.to_vec(),
        }),
    }
}

/// Test hook: `EVI_INSTALL_TEST_STEP_DELAY_MS` pauses after each action, so a
/// test can interrupt a run at a known point. Built only with the `test-hooks`
/// feature: a release build ignores the variable.
pub async fn test_delay() {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("EVI_INSTALL_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

#[cfg(test)]
mod tests {
    /// stderr whose reader is gone.
    struct Closed;

    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_second_signal_stops_the_run_even_with_stderr_gone() {
        assert_eq!(super::on_signal(true, libc::SIGTERM, &mut Closed), None);
        assert_eq!(
            super::on_signal(false, libc::SIGTERM, &mut Closed),
            Some(143)
        );
        let mut said = Vec::new();
        assert_eq!(super::on_signal(false, libc::SIGINT, &mut said), Some(130));
        assert!(String::from_utf8(said)
            .unwrap()
            .starts_with("error: interrupted again by SIGINT: stopped at once"));
    }

    #[test]
    fn the_messages_name_the_signal_and_the_fix() {
        assert_eq!(
            super::first_notice(libc::SIGINT),
            "SIGINT received: finishing the action in progress, then stopping; send it again (Ctrl-C) to stop at once"
        );
        assert_eq!(
            super::abort_message(libc::SIGTERM),
            "interrupted again by SIGTERM: stopped at once, the action in progress may be half done; \
             run the same command again to finish it"
        );
    }

    /// What a release build does: without the `test-hooks` feature the
    /// variable is not read at all. (`scripts/test.sh` checks the release
    /// binary itself for the variables' names.)
    #[cfg(not(feature = "test-hooks"))]
    #[tokio::test(start_paused = true)]
    async fn without_the_feature_the_step_delay_is_ignored() {
        std::env::set_var("EVI_INSTALL_TEST_STEP_DELAY_MS", "60000");
        let started = tokio::time::Instant::now();
        super::test_delay().await;
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    }
}
