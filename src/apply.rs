//! Walks a plan and makes it true, one step at a time, in the plan's order.
//!
//! Every failure names the step and carries the engine's message; what was
//! done before it is reported, and a rerun of `up` picks up from there.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::engine::{Engine, RunState};
use crate::fsutil::write_atomic;
use crate::model::*;
use crate::plan_view::{symbol, verb_word};
use crate::secret::{create_admin_secret, create_secret_pair};
use crate::secret::{redact, Password};
use crate::ui::Ui;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub created: usize,
    pub replaced: usize,
    pub updated: usize,
    pub started: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl Report {
    pub fn summary(&self, elapsed: Duration) -> String {
        let mut text = format!(
            "Apply complete: {} created, {} replaced, {} updated, {} unchanged",
            self.created, self.replaced, self.updated, self.unchanged
        );
        if self.started + self.removed > 0 {
            text.push_str(&format!(
                ", {} started, {} removed",
                self.started, self.removed
            ));
        }
        text.push_str(&format!(" in {:.1}s.", elapsed.as_secs_f64()));
        text
    }
}

pub struct Options {
    /// How long evi-state may take to answer an authenticated PING.
    pub ready_timeout: Duration,
    /// Fired once evi-state is in place and answers (its step is done, or it
    /// is kept): `up` then probes it from a client's side while the clients
    /// are still being started.
    pub state_ready: std::cell::Cell<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Fired with the name of the first client in place (created, replaced,
    /// started or kept): `up` proves reach from inside it.
    pub client_ready: std::cell::Cell<Option<tokio::sync::oneshot::Sender<Option<String>>>>,
}

impl Options {
    pub fn new(ready_timeout: Duration) -> Options {
        Options {
            ready_timeout,
            state_ready: std::cell::Cell::new(None),
            client_ready: std::cell::Cell::new(None),
        }
    }
}

/// Applies `plan`. Images are checked (and pulled if missing) before the first
/// change, so a bad image reference changes nothing on the host.
pub async fn apply<E: Engine>(engine: &E, plan: &Plan, ui: &Ui, opts: &Options) -> Result<Report> {
    ensure_images(engine, plan, ui).await?;
    let mut report = Report::default();
    let describe = |s: &Step| format!("{} {} {}", verb_word(s.verb), s.kind.as_str(), s.name);
    let mut finished: Vec<String> = Vec::new();
    // evi-state or the first client in place (made, started or kept): the proof may start.
    let container_in_place = |step: &Step| {
        if step.kind != Kind::Container || step.verb == Verb::Remove {
            return;
        }
        if step.name == STATE_CONTAINER {
            if let Some(ready) = opts.state_ready.take() {
                let _ = ready.send(());
            }
        } else if replica_of(&step.name).is_some() {
            if let Some(ready) = opts.client_ready.take() {
                let _ = ready.send(Some(step.name.clone()));
            }
        }
    };
    for (i, step) in plan.steps.iter().enumerate() {
        if step.verb == Verb::Keep {
            report.unchanged += 1;
            container_in_place(step);
            continue;
        }
        let not_done: Vec<String> = plan.steps[i..]
            .iter()
            .filter(|s| s.verb != Verb::Keep)
            .map(describe)
            .collect();
        crate::interrupt::check(&finished, &not_done)?;
        let started = Instant::now();
        apply_step(engine, step, ui, opts).await.map_err(|e| {
            anyhow!(
                "{} {} {} failed: {}",
                verb_word(step.verb),
                step.kind.as_str(),
                step.name,
                redact(&format!("{e:#}"))
            )
        })?;
        match step.verb {
            Verb::Create => report.created += 1,
            Verb::Replace => report.replaced += 1,
            Verb::Update => report.updated += 1,
            Verb::Start => report.started += 1,
            Verb::Remove => report.removed += 1,
            Verb::Keep => {}
        }
        let done = match step.verb {
            Verb::Create => "created",
            Verb::Update => "updated",
            Verb::Replace => "replaced",
            Verb::Start => "started",
            Verb::Remove => "removed",
            Verb::Keep => "kept",
        };
        ui.info(&format!(
            "  {:>3} {} {} {done} ({:.1}s)",
            symbol(step.verb),
            step.kind.as_str(),
            step.name,
            started.elapsed().as_secs_f64()
        ));
        finished.push(describe(step));
        container_in_place(step);
        crate::interrupt::test_delay().await;
    }
    Ok(report)
}

/// Applies `plan` and proves the result from a client's side: created is not
/// working, so this ends on a client's PONG (`reach::require_reach`): from
/// inside the first client in place, while the others are still being
/// started, or, where its image cannot run the probe (or the plan has no
/// client), from a new probe client once the apply is done. Returns the
/// report, who proved it and how long the proof took.
pub async fn apply_and_prove<E: Engine>(
    engine: &E,
    plan: &Plan,
    ui: &Ui,
    ready_timeout: Duration,
    settings: &crate::settings::Settings,
    version: SecretVersion,
) -> Result<(Report, crate::reach::ProvenBy, Duration)> {
    let (state_ready, state) = tokio::sync::oneshot::channel();
    let (client_ready, client) = tokio::sync::oneshot::channel();
    let opts = Options {
        ready_timeout,
        state_ready: std::cell::Cell::new(Some(state_ready)),
        client_ready: std::cell::Cell::new(Some(client_ready)),
    };
    let probe = async {
        state.await.ok()?;
        // A plan with no client step says `None` once applied; a failed apply
        // says nothing, and nothing is probed.
        let client = client.await.ok()?;
        let probed = Instant::now();
        let result =
            crate::reach::require_reach(engine, settings, version, client.as_deref()).await;
        Some(result.map(|by| (by, probed.elapsed())))
    };
    let applied = async {
        let report = apply(engine, plan, ui, &opts).await;
        if let (Ok(_), Some(no_client)) = (&report, opts.client_ready.take()) {
            let _ = no_client.send(None);
        }
        // A failed apply may never reach evi-state's step: let the probe go.
        drop(opts.state_ready.take());
        drop(opts.client_ready.take());
        report
    };
    let (report, probe) = tokio::join!(applied, probe);
    let report = report?;
    match probe {
        Some(result) => {
            let (by, took) = result?;
            Ok((report, by, took))
        }
        None => bail!(
            "evi-state was not ready, so no client could be checked; run `evi-install up` again"
        ),
    }
}

/// Makes sure every image the plan runs is in local storage, pulling what is
/// missing; fails with the fix when one cannot be had.
pub async fn ensure_images<E: Engine>(engine: &E, plan: &Plan, ui: &Ui) -> Result<()> {
    let mut images: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.change {
            Change::CreateContainer { spec } | Change::ReplaceContainer { spec } => {
                Some(spec.image.as_str())
            }
            _ => None,
        })
        .collect();
    images.sort();
    images.dedup();
    for image in images {
        if engine.image_exists(image).await? {
            continue;
        }
        ui.info(&format!("  pulling image {image} ..."));
        engine.pull_image(image).await.map_err(|e| {
            anyhow!(
                "image `{image}` is not in local storage and cannot be pulled ({e:#}); \
                 load or build it (`podman image exists {image}`), or fix the image in the settings"
            )
        })?;
    }
    Ok(())
}

async fn apply_step<E: Engine>(engine: &E, step: &Step, ui: &Ui, opts: &Options) -> Result<()> {
    match &step.change {
        Change::Keep => Ok(()),
        Change::WriteConfig { content } => {
            write_atomic(std::path::Path::new(&step.name), content.as_bytes(), 0o644)
        }
        Change::CreateSecrets { version, admin } => {
            if *admin {
                create_admin_secret(engine).await?;
            }
            let password = Password::generate()?;
            create_secret_pair(engine, *version, &password).await
        }
        Change::CreateAdminSecret => create_admin_secret(engine).await,
        Change::ConfigSet { changes } => config_set(engine, changes).await,
        Change::SetClientRules { rules } => set_client_rules(engine, rules, opts).await,
        Change::CreateNetwork { spec } => {
            engine
                .create_network(&step.name, &crate::desired::owned_labels(), spec)
                .await
        }
        Change::ReplaceNetwork { spec, containers } => {
            // Podman cannot change a network's subnet: everything on it goes,
            // and the container steps that follow create it again.
            for name in containers {
                engine
                    .remove_container(name, crate::timeouts::stop_secs_for(name))
                    .await?;
            }
            engine.remove_network(&step.name).await?;
            engine
                .create_network(&step.name, &crate::desired::owned_labels(), spec)
                .await
        }
        Change::CreateVolume => {
            engine
                .create_volume(&step.name, &crate::desired::owned_labels())
                .await
        }
        // evi-state-addr takes evi-state's address: an evi-state made before it
        // existed holds that address itself, and Podman removes no container
        // another runs in the network namespace of. So evi-state goes first, and
        // its own step, which follows, makes it anew.
        Change::CreateContainer { spec } | Change::ReplaceContainer { spec }
            if spec.name == STATE_ADDRESS_CONTAINER =>
        {
            engine
                .remove_container(STATE_CONTAINER, crate::timeouts::STATE_STOP_SECS)
                .await?;
            engine
                .remove_container(&spec.name, spec.stop_timeout)
                .await?;
            run_container(engine, spec, ui, opts).await
        }
        Change::CreateContainer { spec } => run_container(engine, spec, ui, opts).await,
        // Two Valkeys must never share the data volume: evi-state goes first.
        Change::ReplaceContainer { spec } if spec.name == STATE_CONTAINER => {
            engine
                .remove_container(&spec.name, spec.stop_timeout)
                .await?;
            run_container(engine, spec, ui, opts).await
        }
        Change::ReplaceContainer { spec } => replace_client(engine, spec).await,
        Change::StartContainer => start(engine, &step.name, ui, opts).await,
        Change::RemoveContainer => {
            let stop_secs = crate::timeouts::stop_secs_for(&step.name);
            engine.remove_container(&step.name, stop_secs).await
        }
        Change::RemoveSecret => engine.remove_secret(&step.name).await,
        Change::RemoveNetwork => engine.remove_network(&step.name).await,
        Change::RemoveVolume => engine.remove_volume(&step.name).await,
        Change::EnableUnit => crate::boot::enable(&step.name),
        Change::RemoveFile => match std::fs::remove_file(&step.name) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!(
                "cannot remove {}: {}",
                step.name,
                crate::settings::io_reason(&e)
            )),
            _ => Ok(()),
        },
    }
}

/// Applies live directives to the running evi-state with one `CONFIG SET`
/// (all or none), then checks with `CONFIG GET` that each holds its new value.
async fn config_set<E: Engine>(
    engine: &E,
    changes: &[crate::live_config::LiveChange],
) -> Result<()> {
    let script = crate::acl::admin_script(crate::live_config::APPLY_SCRIPT);
    let mut command: Vec<&str> = vec!["sh", "-c", &script, "config-set"];
    for c in changes {
        command.extend([c.key.as_str(), c.new.as_str()]);
    }
    let out = engine.exec(STATE_CONTAINER, &command, &[]).await?;
    if let Some(refused) = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("evi-refused: "))
    {
        bail!(
            "Valkey refused the new settings ({}); nothing was changed: fix the value in the settings",
            redact(refused.trim())
        );
    }
    for c in changes {
        let want = crate::live_config::as_reported(&c.new);
        let got = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("evi-config {} ", c.key)));
        if got.map(str::trim) != Some(want.as_str()) {
            bail!(
                "evi-state reports {} {:?} after CONFIG SET, not {want:?}{}",
                c.key,
                got.unwrap_or("(nothing)"),
                if out.exit_code != 0 {
                    format!(
                        " ({})",
                        redact(format!("{}{}", out.stdout, out.stderr).trim())
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

/// Sets the clients' user's rules in the running evi-state and saves them to
/// its ACL file (passwords untouched; no restart), then checks that Valkey
/// describes them as the settings' ([`crate::acl::describe`]).
async fn set_client_rules<E: Engine>(engine: &E, rules: &str, opts: &Options) -> Result<()> {
    wait_ready(engine, opts.ready_timeout).await?;
    let script = crate::acl::admin_script(crate::acl::SET_CLIENT_RULES_SCRIPT);
    let mut command: Vec<&str> = vec!["sh", "-c", &script, "set-client-rules"];
    command.extend(rules.split_whitespace());
    let out = engine.exec(STATE_CONTAINER, &command, &[]).await?;
    let want = crate::acl::describe(rules);
    let user = crate::acl::users_in(&out.stdout)
        .into_iter()
        .find(|u| u.name == crate::acl::CLIENT_USER);
    match user {
        Some(u) if u.rules == want => Ok(()),
        Some(u) => bail!(
            "evi-state describes the clients' rules as `{}` after ACL SETUSER, not `{want}`",
            u.rules
        ),
        None => bail!(
            "cannot set the clients' rules in evi-state ({})",
            redact(format!("{}{}", out.stdout, out.stderr).trim())
        ),
    }
}

async fn run_container<E: Engine>(
    engine: &E,
    spec: &ContainerSpec,
    ui: &Ui,
    opts: &Options,
) -> Result<()> {
    engine.create_container(spec).await?;
    start(engine, &spec.name, ui, opts).await
}

/// Starts a container; for evi-state, also waits until it answers.
async fn start<E: Engine>(engine: &E, name: &str, ui: &Ui, opts: &Options) -> Result<()> {
    engine.start_container(name).await?;
    if name == STATE_CONTAINER {
        let _spinner = ui.spinner("waiting for evi-state to answer an authenticated PING");
        // A restart reloads the whole data set: say how far it got, not just a spinner.
        wait_ready_reporting(engine, opts.ready_timeout, &|p| {
            ui.info(&format!("\r  {p}"))
        })
        .await?;
    }
    Ok(())
}

/// Polls with a short first pause that grows, so a fast answer is seen at
/// once and a slow one does not flood Podman with requests.
pub struct Poll {
    deadline: Instant,
    pause: Duration,
}

impl Poll {
    pub fn new(timeout: Duration) -> Poll {
        Poll {
            deadline: Instant::now() + timeout,
            pause: crate::timeouts::POLL_FIRST,
        }
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 3 / 2).min(crate::timeouts::POLL_LONGEST);
    }
}

/// Replaces a client without a moment in which it is absent: the successor
/// starts under a temporary name first, then the old container goes and the
/// successor takes its name.
///
/// Starting the successor first also gives it a new address. Re-created at
/// once, it would reuse the old one, and on Podman 4.3 (netavark 1.4) the old
/// container's conntrack entries then swallow its DNS queries for up to a
/// minute, so the client could not find evi-state.
pub async fn replace_client<E: Engine>(engine: &E, client: &ContainerSpec) -> Result<()> {
    let next = successor_name(&client.name);
    let mut successor = client.clone();
    successor.name = next.clone();
    // A leftover successor of an interrupted run may be serving: stop it as a client.
    engine
        .remove_container(&next, crate::timeouts::stop_secs_for(&next))
        .await?;
    // The successor takes the fixed address its predecessor does not hold.
    if let Some(held) = engine
        .container_address(&client.name, &client.network)
        .await?
    {
        successor.addresses.retain(|a| *a != held);
    }
    engine.create_container(&successor).await?;
    engine.start_container(&next).await?;
    confirm_running(engine, &next).await?;
    engine
        .remove_container(&client.name, client.stop_timeout)
        .await?;
    engine.rename_container(&next, &client.name).await
}

/// Waits until a re-created client runs (or fails, with its logs).
pub async fn confirm_running<E: Engine>(engine: &E, name: &str) -> Result<()> {
    let limit = crate::timeouts::CLIENT_START;
    let mut poll = Poll::new(limit);
    loop {
        match engine.container_state(name).await? {
            Some(RunState::Running) => return Ok(()),
            Some(RunState::Exited { code }) => {
                let logs = engine.logs(name, 10).await.unwrap_or_default();
                bail!(
                    "{name} exited (code {code}) after re-creation: {}",
                    redact(logs.trim())
                );
            }
            _ if poll.expired() => bail!("{name} did not start within {}s", limit.as_secs()),
            _ => poll.pause().await,
        }
    }
}

/// Asks evi-state for an authenticated PING (as `evi-admin`, `acl::PING_SCRIPT`)
/// until it answers PONG.
pub use crate::acl::PING_SCRIPT;

pub async fn wait_ready<E: Engine>(engine: &E, timeout: Duration) -> Result<()> {
    wait_ready_reporting(engine, timeout, &|_| {}).await
}

/// `wait_ready`, telling `report` how far evi-state is in loading its data
/// set while it answers `-LOADING` (at most once a second).
pub async fn wait_ready_reporting<E: Engine>(
    engine: &E,
    timeout: Duration,
    report: &dyn Fn(&str),
) -> Result<()> {
    // A local Valkey is usually up within a few tens of ms.
    let mut poll = Poll::new(timeout);
    let mut last;
    let mut reported: Option<Instant> = None;
    let script = crate::acl::admin_script(crate::acl::READY_SCRIPT);
    loop {
        match engine.container_state(STATE_CONTAINER).await? {
            Some(RunState::Exited { code }) => {
                let logs = engine.logs(STATE_CONTAINER, 10).await.unwrap_or_default();
                // Its restart policy would start it again and again, to no use:
                // stopped by request, it stays down with its logs, for the operator.
                let _ = engine.stop_container(STATE_CONTAINER, 0).await;
                bail!(
                    "evi-state exited at start (exit code {code}; stopped, so that it does not restart in a loop); \
                     its last log lines:\n{}",
                    indent(&redact(&logs))
                );
            }
            None => bail!("evi-state disappeared while starting"),
            _ => {}
        }
        // Bounded by what is left of the wait: a hung exec cannot outlast it.
        let limit = poll.remaining().max(Duration::from_secs(1));
        let command = ["sh", "-c", script.as_str()];
        let ping = engine.exec(STATE_CONTAINER, &command, &[]);
        match tokio::time::timeout(limit, ping).await {
            Ok(Ok(out)) if out.exit_code == 0 && out.stdout.trim() == "PONG" => return Ok(()),
            Ok(Ok(out)) => {
                if let Some(progress) = loading_progress(&out.stdout) {
                    if reported.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        report(&progress);
                        reported = Some(Instant::now());
                    }
                }
                last = format!("{}{}", out.stdout.trim(), out.stderr.trim());
            }
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = format!("none within {:.1}s", limit.as_secs_f64()),
        }
        if poll.expired() {
            let logs = engine.logs(STATE_CONTAINER, 10).await.unwrap_or_default();
            bail!(
                "evi-state did not answer an authenticated PING within {}s (last answer: {}); its last log lines:\n{}",
                timeout.as_secs(),
                redact(&last),
                indent(&redact(&logs))
            );
        }
        poll.pause().await;
    }
}

/// "loading its data set: 42% done, about 5 s left" from the readiness
/// script's output while Valkey answers `-LOADING`; `None` otherwise.
fn loading_progress(out: &str) -> Option<String> {
    if !out.contains("LOADING") {
        return None;
    }
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut text = "evi-state is loading its data set".to_string();
    if let Some(perc) = field("loading_loaded_perc:") {
        let perc: f64 = perc.parse().unwrap_or(0.0);
        text.push_str(&format!(": {perc:.0}% done"));
    }
    if let Some(eta) = field("loading_eta_seconds:").and_then(|v| v.parse::<i64>().ok()) {
        if eta >= 0 {
            text.push_str(&format!(", about {eta} s left"));
        }
    }
    Some(text)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod loading_tests {
    use super::loading_progress;

    #[test]
    fn a_loading_server_reports_its_progress() {
        let out = "LOADING Valkey is loading the dataset in memory\nloading_loaded_perc:42.17\nloading_eta_seconds:5\n";
        assert_eq!(
            loading_progress(out).as_deref(),
            Some("evi-state is loading its data set: 42% done, about 5 s left")
        );
        assert_eq!(loading_progress("NOAUTH Authentication required."), None);
        assert_eq!(
            loading_progress("LOADING Valkey is loading").as_deref(),
            Some("evi-state is loading its data set")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::build;
    use crate::engine::fake::FakeEngine;
    use crate::plan::plan;
    use crate::settings::{from_yaml, Settings};

    /// Settings with evi-be from `image` and a state directory of their own,
    /// and the stack they describe at password generation 1.
    fn fresh_site(image: &str) -> (tempfile::TempDir, Settings, Desired) {
        let tmp = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {}\nservices: {{ evi-be: {{ image: {image} }} }}",
            tmp.path().display()
        );
        let settings = from_yaml(Some((std::path::Path::new("evi.yaml"), &yaml)), None).unwrap();
        let desired = build(&settings, "port 6379\n", SecretVersion(1));
        (tmp, settings, desired)
    }

    #[tokio::test]
    async fn fresh_apply_runs_in_order_and_converges() {
        let (_tmp, settings, desired) = fresh_site("app");
        let engine = FakeEngine::default();
        let p = plan(&desired, &Observed::default()).unwrap();
        let opts = Options::new(Duration::from_secs(1));
        let report = apply(&engine, &p, &Ui::silent(), &opts).await.unwrap();
        assert_eq!(report.created, 7);
        assert_eq!(
            engine.calls(),
            [
                "create secret evi-admin-password",
                "create secret evi-valkey-url-v1",
                "create secret evi-state-password-v1",
                "create network evi-net",
                "create volume evi-state-data",
                // (evi-state made before evi-state-addr existed would hold its address)
                "remove container evi-state",
                "remove container evi-state-addr",
                "create container evi-state-addr",
                "start container evi-state-addr",
                "create container evi-state",
                "start container evi-state",
                &format!(
                    "exec evi-state sh -c {}",
                    crate::acl::admin_script(crate::acl::READY_SCRIPT)
                ),
                "create container evi-be",
                "start container evi-be",
            ]
        );
        // The URL secret holds exactly the password secret's value in the seed's URL form.
        let values = engine.secret_values.lock().unwrap().clone();
        assert_eq!(values[0].0, ADMIN_SECRET);
        assert_eq!(
            values[1].1,
            format!("redis://:{}@evi-state:6379", values[2].1)
        );

        let mut host = engine.host.lock().unwrap().clone();
        host.config = std::fs::read_to_string(settings.config_path()).ok();
        // What a real evi-state's first start has (read by `commands::observe`;
        // the end-to-end tests check it on the real server).
        host.client_rules = Some(crate::acl::describe(crate::acl::DEFAULT_USER_RULES));
        assert!(!plan(&desired, &host).unwrap().has_changes());
    }

    /// `up`'s apply and proof, with a 1 s readiness wait and generation 1.
    async fn prove(
        engine: &FakeEngine,
        p: &Plan,
        settings: &Settings,
    ) -> Result<(Report, crate::reach::ProvenBy, Duration)> {
        let ready = Duration::from_secs(1);
        apply_and_prove(engine, p, &Ui::silent(), ready, settings, SecretVersion(1)).await
    }

    #[tokio::test]
    async fn the_probe_runs_once_evi_state_answers_and_a_failed_apply_ends_at_once() {
        let (_tmp, settings, desired) = fresh_site("app");
        let p = plan(&desired, &Observed::default()).unwrap();

        // A client image that can run the probe: the proof comes from inside
        // the first client as soon as it runs, and no probe container is made.
        let engine = FakeEngine::default();
        let (report, by, _) = prove(&engine, &p, &settings).await.unwrap();
        assert_eq!(report.created, 7);
        assert_eq!(by, crate::reach::ProvenBy::Client("evi-be".into()));
        let calls = engine.calls();
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap();
        let probe_in_be = format!("exec evi-be sh -c {}", crate::reach::PROBE_SCRIPT);
        assert!(at(&probe_in_be) > at("start container evi-be"));
        assert!(!calls.iter().any(|c| c.contains("evi-probe")), "{calls:?}");

        // An image with no shell: a probe container, once evi-state answers.
        let engine = FakeEngine {
            no_shell: vec!["evi-be".into()],
            ..FakeEngine::default()
        };
        let (_, by, _) = prove(&engine, &p, &settings).await.unwrap();
        assert_eq!(by, crate::reach::ProvenBy::NewClient);
        let calls = engine.calls();
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap();
        assert!(
            at("create container evi-probe")
                > at(&format!(
                    "exec evi-state sh -c {}",
                    crate::acl::admin_script(crate::acl::READY_SCRIPT)
                ))
        );
        assert!(calls.contains(&"wait container evi-probe".to_string()));

        // evi-state never comes up: the error, at once, and no probe.
        let engine = FakeEngine {
            fail_on: Some("create container evi-state".into()),
            ..FakeEngine::default()
        };
        let result = tokio::time::timeout(Duration::from_secs(5), prove(&engine, &p, &settings))
            .await
            .expect("a failed apply does not wait for the probe");
        assert!(result.unwrap_err().to_string().contains("injected failure"));
        assert!(!engine.calls().iter().any(|c| c.contains("evi-probe")));
    }

    #[tokio::test]
    async fn a_successor_takes_the_address_its_predecessor_does_not_hold() {
        let (_tmp, _, desired) = fresh_site("app");
        let be = desired
            .containers
            .iter()
            .find(|c| c.name == "evi-be")
            .unwrap();
        let [first, second] = [be.addresses[0], be.addresses[1]];
        for (held, expected) in [(Some(first), second), (Some(second), first), (None, first)] {
            let engine = FakeEngine::default();
            if let Some(ip) = held {
                engine.addresses.lock().unwrap().insert("evi-be".into(), ip);
            }
            replace_client(&engine, be).await.unwrap();
            let created = engine.created.lock().unwrap().clone();
            assert_eq!(created[0].name, "evi-be-next");
            assert_eq!(created[0].addresses[0], expected, "{held:?}");
            // Same labels: the swap is no drift.
            assert_eq!(created[0].labels, be.labels);
            assert_eq!(be.hosts, ["evi-state:10.90.213.2"]);
        }
    }

    #[tokio::test]
    async fn a_missing_image_fails_before_any_change() {
        let (_tmp, settings, desired) = fresh_site("missing/app");
        let engine = FakeEngine::default();
        let p = plan(&desired, &Observed::default()).unwrap();
        let err = apply(
            &engine,
            &p,
            &Ui::silent(),
            &Options::new(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("image `missing/app` is not in local storage"),
            "{err}"
        );
        assert_eq!(engine.calls(), ["pull image missing/app"]);
        assert!(!settings.config_path().exists());
    }
}
