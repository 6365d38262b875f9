//! The settings model and how it is loaded.
//!
//! Precedence, lowest first: built-in defaults (`state/defaults.yaml`, embedded),
//! the settings file, the environment (`EVI_STATE_DIR`), flags (`--state-dir`).
//! clap folds the environment into the flags (`#[arg(env = ...)]`), so this module
//! only sees two YAML layers and one override.
//!
//! Parsing is pure (`from_yaml`); `load` adds the file system. Every error names
//! the file, the key and, where the parser knows it, the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ipnet::Ipv4Net;

use crate::size::ByteSize;

/// The built-in defaults, kept as data so a reviewer can read them without code.
pub const DEFAULTS_YAML: &str = include_str!("../state/defaults.yaml");

/// The file looked for in the working directory when no settings file is named.
pub const IMPLICIT_SETTINGS_FILE: &str = "evi.yaml";

/// Fully resolved, validated settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub network: String,
    /// evi-net's IPv4 subnet. evi-state and every container evi-install
    /// creates on it get fixed addresses from it (see `addressing.rs`), so
    /// clients find evi-state without the network's DNS.
    pub network_subnet: Ipv4Net,
    pub services: Services,
    pub valkey: Valkey,
    /// The settings file these came from, if any (absolute), for headers and messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Services {
    pub evi_state: Service,
    /// `None` until the settings name an image; `up` requires one.
    pub evi_be: Option<Service>,
    /// Optional: without an image no worker is deployed.
    pub evi_worker: Option<Service>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub image: String,
    /// Overrides the image's command; empty means the image's own.
    pub command: Vec<String>,
    /// How many containers run it (evi-be and evi-worker; evi-state is 1).
    pub replicas: u32,
    /// Extra environment for every replica (never `VALKEY_URL`).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Valkey {
    pub maxmemory: ByteSize,
    pub maxmemory_policy: EvictionPolicy,
    pub appendonly: bool,
    pub appendfsync: AppendFsync,
    pub auto_aof_rewrite_percentage: u32,
    pub auto_aof_rewrite_min_size: ByteSize,
    /// What the clients' user may do besides the guide's code paths.
    pub client_access: crate::acl::ClientAccess,
}

/// Valkey's eight eviction policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    Noeviction,
    AllkeysLru,
    AllkeysLfu,
    AllkeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppendFsync {
    Always,
    Everysec,
    No,
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.serialize(f)
    }
}

impl fmt::Display for AppendFsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.serialize(f)
    }
}

// One layer of settings as written in YAML: every key optional, unknown keys refused.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    state_dir: Option<PathBuf>,
    network: Option<String>,
    network_subnet: Option<String>,
    services: Option<ServicesLayer>,
    valkey: Option<ValkeyLayer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesLayer {
    #[serde(rename = "evi-state")]
    evi_state: Option<ServiceLayer>,
    #[serde(rename = "evi-be")]
    evi_be: Option<ServiceLayer>,
    #[serde(rename = "evi-worker")]
    evi_worker: Option<ServiceLayer>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceLayer {
    image: Option<String>,
    command: Option<Vec<String>>,
    replicas: Option<u32>,
    env: Option<BTreeMap<String, EnvValue>>,
}

/// An environment value as written in YAML: a string, or a number or boolean
/// taken as its text (`EVI_WORK_MS: 100`).
#[derive(Debug, Clone, PartialEq)]
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValkeyLayer {
    maxmemory: Option<ByteSize>,
    maxmemory_policy: Option<EvictionPolicy>,
    appendonly: Option<bool>,
    appendfsync: Option<AppendFsync>,
    auto_aof_rewrite_percentage: Option<u32>,
    auto_aof_rewrite_min_size: Option<ByteSize>,
    client_access: Option<ClientAccessLayer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientAccessLayer {
    commands: Option<Vec<String>>,
    keys: Option<Vec<String>>,
    channels: Option<Vec<String>>,
}

/// Where a settings error was found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The file, or `built-in defaults`.
    pub origin: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}; {}", self.problem, self.fix)
    }
}

impl std::error::Error for SettingsError {}

impl SettingsError {
    fn new(
        origin: &str,
        key: Option<&str>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        SettingsError {
            origin: origin.to_string(),
            line: None,
            key: key.map(str::to_string),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Inputs to `load` that come from outside the settings file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config` or `EVI_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--state-dir` or `EVI_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
}

/// Loads the settings: defaults, then the settings file, then overrides.
pub fn load(overrides: &Overrides) -> Result<Settings, SettingsError> {
    let (path, explicit) = match &overrides.config {
        Some(path) => (Some(path.clone()), true),
        None => {
            let implicit = PathBuf::from(IMPLICIT_SETTINGS_FILE);
            (implicit.exists().then_some(implicit), false)
        }
    };
    let file = match &path {
        Some(path) => Some((path.clone(), read_settings_file(path, explicit)?)),
        None => None,
    };
    let file_ref = file.as_ref().map(|(p, text)| (p.as_path(), text.as_str()));
    let mut settings = from_yaml(file_ref, overrides.state_dir.as_deref())?;
    settings.source = path.map(|p| std::path::absolute(&p).unwrap_or(p));
    Ok(settings)
}

fn read_settings_file(path: &Path, explicit: bool) -> Result<String, SettingsError> {
    let origin = path.display().to_string();
    let how = if explicit {
        "check the path given by --config or EVI_CONFIG"
    } else {
        "fix or remove ./evi.yaml, or name another file with --config"
    };
    let bytes = std::fs::read(path).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "settings file not found".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "settings file not readable (permission denied)".to_string()
            }
            _ if path.is_dir() => "settings file is a directory".to_string(),
            _ => format!("cannot read settings file: {}", io_reason(&e)),
        };
        SettingsError::new(&origin, None, problem, how)
    })?;
    String::from_utf8(bytes).map_err(|e| {
        SettingsError::new(
            &origin,
            None,
            format!(
                "settings file is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            "save it as UTF-8 text",
        )
    })
}

/// The OS error without Rust's "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Resolves settings from the embedded defaults, an optional settings file
/// (`(path, contents)`) and an optional state directory override. Pure.
pub fn from_yaml(
    file: Option<(&Path, &str)>,
    state_dir: Option<&Path>,
) -> Result<Settings, SettingsError> {
    let defaults = parse_layer("built-in defaults", DEFAULTS_YAML)?;
    let layer = match file {
        Some((path, text)) => parse_layer(&path.display().to_string(), text)?,
        None => Layer::default(),
    };
    let origin = file.map_or("built-in defaults".to_string(), |(p, _)| {
        p.display().to_string()
    });
    resolve(defaults, layer, state_dir, &origin)
}

fn parse_layer(origin: &str, text: &str) -> Result<Layer, SettingsError> {
    // An empty file (or one with only comments) is a valid, empty layer.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Layer::default());
    }
    serde_yaml::from_str(text).map_err(|e| yaml_error(origin, &e))
}

/// Turns a YAML error into a `SettingsError` with key, line and a fix.
///
/// yaml_serde formats its errors as `path.to.key: message at line L column C`;
/// we take that apart so the key is named the same way for every kind of error.
fn yaml_error(origin: &str, err: &serde_yaml::Error) -> SettingsError {
    let line = err.location().map(|l| l.line());
    let mut text = err.to_string();
    if let Some(i) = text.rfind(" at line ") {
        text.truncate(i);
    }
    let (path, message) = match text.split_once(": ") {
        Some((path, rest)) if is_key_path(path) => (Some(path.to_string()), rest.to_string()),
        _ => (None, text.clone()),
    };
    let mut error = SettingsError::new(
        origin,
        path.as_deref(),
        message.clone(),
        "fix this value in the settings file",
    );
    error.line = line;

    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let valid = backticked(expected);
        let full_key = match &path {
            Some(p) => format!("{p}.{field}"),
            None => field.to_string(),
        };
        error.key = None;
        error.problem = format!("unknown key `{full_key}`");
        error.fix = match nearest(field, &valid) {
            Some(best) => format!("did you mean `{best}`?"),
            None => format!("valid keys here: {}", valid.join(", ")),
        };
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let valid = backticked(expected);
        error.problem = format!("unknown value `{value}`");
        error.fix = match nearest(value, &valid) {
            Some(best) => format!("did you mean `{best}`? (one of: {})", valid.join(", ")),
            None => format!("use one of: {}", valid.join(", ")),
        };
    } else if message.starts_with("invalid size") || message.starts_with("size `") {
        error.fix = "write a size such as `1gb`, `512mb` or a number of bytes".to_string();
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        error.problem = message.replace("invalid type: ", "wrong type: ");
    } else if path.is_none() {
        error.problem = format!("malformed YAML: {message}");
        error.fix = "fix the YAML syntax at that line".to_string();
    }
    if path.is_none() && message.contains("expected struct Layer") {
        error.problem = "the settings file must be a YAML mapping of keys to values".to_string();
        error.fix = "start from the example in the README".to_string();
    }
    error
}

fn is_key_path(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '[' | ']'))
}

/// All `backticked` words in a serde "expected ..." message.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The candidate closest to `word`, if it is close enough to be a typo.
fn nearest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// `valkey.client_access`, each entry checked (`acl.rs`).
fn client_access(
    origin: &str,
    layer: ClientAccessLayer,
) -> Result<crate::acl::ClientAccess, SettingsError> {
    let check = |key: &str,
                 list: Option<Vec<String>>,
                 f: fn(&str) -> Result<String, (String, String)>|
     -> Result<Vec<String>, SettingsError> {
        list.unwrap_or_default()
            .iter()
            .map(|item| {
                f(item).map_err(|(problem, fix)| {
                    SettingsError::new(
                        origin,
                        Some(&format!("valkey.client_access.{key}")),
                        problem,
                        fix,
                    )
                })
            })
            .collect()
    };
    Ok(crate::acl::ClientAccess {
        commands: check("commands", layer.commands, crate::acl::check_client_command)?,
        keys: check("keys", layer.keys, crate::acl::check_client_pattern)?,
        channels: check("channels", layer.channels, crate::acl::check_client_pattern)?,
    })
}

fn resolve(
    defaults: Layer,
    file: Layer,
    state_dir: Option<&Path>,
    origin: &str,
) -> Result<Settings, SettingsError> {
    let d_services = defaults.services.unwrap_or_default();
    let f_services = file.services.unwrap_or_default();
    let d_valkey = defaults.valkey.unwrap_or_default();
    let f_valkey = file.valkey.unwrap_or_default();

    let missing_default = |key: &str| {
        SettingsError::new(
            "built-in defaults",
            Some(key),
            "missing",
            "this is a bug in evi-install",
        )
    };
    macro_rules! pick {
        ($field:ident, $key:literal) => {
            f_valkey
                .$field
                .or(d_valkey.$field)
                .ok_or_else(|| missing_default($key))?
        };
    }
    let valkey = Valkey {
        maxmemory: pick!(maxmemory, "valkey.maxmemory"),
        maxmemory_policy: pick!(maxmemory_policy, "valkey.maxmemory_policy"),
        appendonly: pick!(appendonly, "valkey.appendonly"),
        appendfsync: pick!(appendfsync, "valkey.appendfsync"),
        auto_aof_rewrite_percentage: pick!(
            auto_aof_rewrite_percentage,
            "valkey.auto_aof_rewrite_percentage"
        ),
        auto_aof_rewrite_min_size: pick!(
            auto_aof_rewrite_min_size,
            "valkey.auto_aof_rewrite_min_size"
        ),
        client_access: client_access(
            origin,
            f_valkey
                .client_access
                .or(d_valkey.client_access)
                .unwrap_or_default(),
        )?,
    };

    let service = |name: &str,
                   d: Option<ServiceLayer>,
                   f: Option<ServiceLayer>|
     -> Result<Option<Service>, SettingsError> {
        let d = d.unwrap_or_default();
        let f = f.unwrap_or_default();
        let command = f.command.or(d.command).unwrap_or_default();
        let replicas = f.replicas.or(d.replicas);
        let env = f.env.or(d.env).unwrap_or_default();
        let key = |k: &str| format!("services.{name}.{k}");
        if name == "evi-state" {
            // One Valkey owns the data volume; its environment is the start script's.
            if replicas.is_some() || !env.is_empty() {
                let k = if replicas.is_some() {
                    "replicas"
                } else {
                    "env"
                };
                return Err(SettingsError::new(
                    origin,
                    Some(&key(k)),
                    "evi-state runs as exactly one container, configured by `valkey`",
                    format!("remove `services.evi-state.{k}`"),
                ));
            }
        }
        if replicas == Some(0) {
            return Err(SettingsError::new(
                origin,
                Some(&key("replicas")),
                "0 replicas",
                format!("set 1 or more; to run no {name}, leave out its image"),
            ));
        }
        let env = check_env(origin, name, env)?;
        match f.image.or(d.image) {
            Some(image) => {
                check_image(origin, name, &image)?;
                Ok(Some(Service {
                    image,
                    command,
                    replicas: replicas.unwrap_or(1),
                    env,
                }))
            }
            None if !command.is_empty() || replicas.is_some() || !env.is_empty() => {
                let k = if !command.is_empty() {
                    "command"
                } else if replicas.is_some() {
                    "replicas"
                } else {
                    "env"
                };
                Err(SettingsError::new(
                    origin,
                    Some(&key(k)),
                    format!("`{k}` is set but no image"),
                    format!("add `services.{name}.image`"),
                ))
            }
            None => Ok(None),
        }
    };
    let evi_state = service("evi-state", d_services.evi_state, f_services.evi_state)?
        .ok_or_else(|| missing_default("services.evi-state.image"))?;
    let services = Services {
        evi_state,
        evi_be: service("evi-be", d_services.evi_be, f_services.evi_be)?,
        evi_worker: service("evi-worker", d_services.evi_worker, f_services.evi_worker)?,
    };

    let network = file
        .network
        .or(defaults.network)
        .ok_or_else(|| missing_default("network"))?;
    if !is_podman_name(&network) {
        return Err(SettingsError::new(
            origin,
            Some("network"),
            format!("`{network}` is not a valid network name"),
            "use letters, digits, `-`, `_` and `.`, starting with a letter or digit",
        ));
    }
    let subnet_text = file
        .network_subnet
        .or(defaults.network_subnet)
        .ok_or_else(|| missing_default("network_subnet"))?;
    let network_subnet = crate::addressing::parse_subnet(&subnet_text).map_err(|problem| {
        SettingsError::new(origin, Some("network_subnet"), problem, SUBNET_FIX)
    })?;
    let state_dir = state_dir
        .map(Path::to_path_buf)
        .or(file.state_dir)
        .or_else(user_state_dir)
        .or(defaults.state_dir)
        .ok_or_else(|| missing_default("state_dir"))?;
    if !state_dir.is_absolute() {
        return Err(SettingsError::new(
            origin,
            Some("state_dir"),
            format!("`{}` is not an absolute path", state_dir.display()),
            "use an absolute path such as /var/lib/evi",
        ));
    }

    for (name, service) in [
        ("evi-be", &services.evi_be),
        ("evi-worker", &services.evi_worker),
    ] {
        check_replicas_fit(origin, name, service.as_ref(), network_subnet)?;
    }
    let settings = Settings {
        state_dir,
        network,
        network_subnet,
        services,
        valkey,
        source: None,
    };
    validate_valkey(&settings.valkey, origin)?;
    Ok(settings)
}

const SUBNET_FIX: &str =
    "write a private IPv4 subnet from /16 to /26 such as `10.90.213.0/24`, unused on this host";

fn validate_valkey(valkey: &Valkey, origin: &str) -> Result<(), SettingsError> {
    if valkey.maxmemory.bytes() == 0 {
        // Valkey reads 0 as "no limit", which would let the dataset grow until the
        // host runs out of memory: the opposite of what the setting is for.
        return Err(SettingsError::new(
            origin,
            Some("valkey.maxmemory"),
            "0 means no memory limit at all",
            "set a limit below the host's memory, e.g. `1gb`",
        ));
    }
    if valkey.auto_aof_rewrite_percentage > i32::MAX as u32 {
        // Valkey reads it as an int and refuses to start above this.
        return Err(SettingsError::new(
            origin,
            Some("valkey.auto_aof_rewrite_percentage"),
            format!(
                "{} is more than Valkey accepts (2147483647)",
                valkey.auto_aof_rewrite_percentage
            ),
            "use a percentage such as 100, or 0 to turn automatic rewrites off",
        ));
    }
    Ok(())
}

/// Checks `valkey.maxmemory` against the host's memory (bytes).
pub fn check_fits_host(settings: &Settings, host_memory: u64) -> Result<(), SettingsError> {
    let max = settings.valkey.maxmemory;
    if max.bytes() > host_memory {
        let origin = settings
            .source
            .as_ref()
            .map_or("built-in defaults".to_string(), |p| p.display().to_string());
        return Err(SettingsError::new(
            &origin,
            Some("valkey.maxmemory"),
            format!(
                "{max} is more than this host's memory ({})",
                ByteSize(host_memory)
            ),
            "set a limit below the host's memory",
        ));
    }
    Ok(())
}

/// Every replica has two fixed addresses below evi-net's dynamic range
/// (`addressing.rs`); refuses a count that does not fit the subnet.
fn check_replicas_fit(
    origin: &str,
    name: &str,
    service: Option<&Service>,
    subnet: Ipv4Net,
) -> Result<(), SettingsError> {
    let Some(service) = service else {
        return Ok(());
    };
    let slot = crate::model::CLIENT_SERVICES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, slot)| *slot);
    let room = crate::addressing::max_replicas(subnet, slot);
    if service.replicas > room {
        return Err(SettingsError::new(
            origin,
            Some(&format!("services.{name}.replicas")),
            format!(
                "{} replicas of {name} do not fit the fixed addresses of network_subnet {subnet} (room for {room})",
                service.replicas
            ),
            format!("lower `replicas` to {room} or less, or set a larger `network_subnet`"),
        ));
    }
    Ok(())
}

/// Environment names as a shell writes them; `VALKEY_URL` is the secret's.
fn check_env(
    origin: &str,
    service: &str,
    env: BTreeMap<String, EnvValue>,
) -> Result<BTreeMap<String, String>, SettingsError> {
    let mut out = BTreeMap::new();
    for (name, EnvValue(value)) in env {
        let key = format!("services.{service}.env.{name}");
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SettingsError::new(
                origin,
                Some(&key),
                format!("`{name}` is not an environment variable name"),
                "use letters, digits and `_`, not starting with a digit",
            ));
        }
        if name == crate::model::URL_ENV {
            return Err(SettingsError::new(
                origin,
                Some(&key),
                "VALKEY_URL is set by evi-install from the password secret",
                format!("remove `{key}`"),
            ));
        }
        if value.contains('\0') {
            return Err(SettingsError::new(
                origin,
                Some(&key),
                "the value contains a NUL byte",
                "remove it",
            ));
        }
        out.insert(name, value);
    }
    Ok(out)
}

fn check_image(origin: &str, service: &str, image: &str) -> Result<(), SettingsError> {
    if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
        return Err(SettingsError::new(
            origin,
            Some(&format!("services.{service}.image")),
            format!("`{image}` is not an image reference"),
            "write an image such as `docker.io/valkey/valkey:8`",
        ));
    }
    Ok(())
}

/// Podman's rule for network, volume and container names.
pub fn is_podman_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Settings {
    /// Where the rendered config lives: `STATE_DIR/valkey/valkey.conf`.
    pub fn config_path(&self) -> PathBuf {
        self.state_dir.join("valkey").join("valkey.conf")
    }

    /// Describes where the settings came from, for the config header.
    pub fn source_description(&self) -> String {
        match &self.source {
            Some(path) => format!("built-in defaults and {}", path.display()),
            None => "built-in defaults".to_string(),
        }
    }

    /// Every client container the settings ask for, replica by replica:
    /// `evi-be`, `evi-be-2`, ..., `evi-worker`, `evi-worker-2`, ...
    pub fn client_names(&self) -> Vec<String> {
        [
            (crate::model::BACKEND_CONTAINER, &self.services.evi_be),
            (crate::model::WORKER_CONTAINER, &self.services.evi_worker),
        ]
        .into_iter()
        .flat_map(|(name, service)| {
            let n = service.as_ref().map_or(0, |s| s.replicas);
            (1..=n).map(move |r| crate::model::replica_name(name, r))
        })
        .collect()
    }

    /// The evi-be service, or an error saying how to set it: `up` needs it.
    pub fn require_backend(&self) -> Result<&Service, SettingsError> {
        self.services.evi_be.as_ref().ok_or_else(|| {
            let origin = self
                .source
                .as_ref()
                .map_or("no settings file".to_string(), |p| p.display().to_string());
            SettingsError::new(
                &origin,
                Some("services.evi-be.image"),
                "no image for evi-be",
                "set `services.evi-be.image` in the settings file (see the README)",
            )
        })
    }
}

/// For an ordinary user (rootless Podman) the default state directory is the
/// user's own, where the XDG base directory spec places state:
/// `$XDG_STATE_HOME/evi`, else `~/.local/state/evi`. Root keeps the built-in
/// `/var/lib/evi` (`state/defaults.yaml`).
#[test]
fn an_ordinary_users_state_dir_is_under_their_home() {
    // Whoever runs the tests: root gets none (the built-in default applies).
    match user_state_dir() {
        None => assert!(rustix::process::geteuid().is_root()),
        Some(dir) => assert!(dir.ends_with("evi") && dir.is_absolute()),
    }
}

fn user_state_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return None;
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local/state"))
        })
        .map(|d| d.join("evi"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Settings, SettingsError> {
        from_yaml(Some((Path::new("evi.yaml"), yaml)), None)
    }

    #[test]
    fn defaults_match_the_seed_guide() {
        let s = from_yaml(None, None).unwrap();
        // Root's default; an ordinary user's is under their home (XDG).
        let expected = user_state_dir().unwrap_or_else(|| PathBuf::from("/var/lib/evi"));
        assert_eq!(s.state_dir, expected);
        assert_eq!(s.network, "evi-net");
        assert_eq!(s.services.evi_state.image, "docker.io/valkey/valkey:8");
        assert_eq!(s.services.evi_be, None);
        assert_eq!(s.valkey.maxmemory, ByteSize(1 << 30));
        assert_eq!(s.valkey.maxmemory_policy, EvictionPolicy::VolatileLru);
        assert!(s.valkey.appendonly);
        assert_eq!(s.valkey.appendfsync, AppendFsync::Everysec);
        assert_eq!(s.valkey.auto_aof_rewrite_percentage, 100);
        assert_eq!(s.valkey.auto_aof_rewrite_min_size, ByteSize(64 << 20));
    }

    #[test]
    fn file_overrides_defaults_and_flag_overrides_file() {
        let yaml = "state_dir: /srv/evi\nvalkey:\n  maxmemory: 512mb\nservices:\n  evi-be: { image: app:1, command: [run] }\n";
        let s = parse(yaml).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/srv/evi"));
        assert_eq!(s.valkey.maxmemory, ByteSize(512 << 20));
        assert_eq!(
            s.valkey.maxmemory_policy,
            EvictionPolicy::VolatileLru,
            "untouched keys keep defaults"
        );
        assert_eq!(
            s.services.evi_be,
            Some(Service {
                image: "app:1".into(),
                command: vec!["run".into()],
                replicas: 1,
                env: BTreeMap::new(),
            })
        );
        let s = from_yaml(
            Some((Path::new("evi.yaml"), yaml)),
            Some(Path::new("/flag")),
        )
        .unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/flag"));
    }

    #[test]
    fn empty_and_comment_only_files_are_valid() {
        assert_eq!(parse("").unwrap(), from_yaml(None, None).unwrap());
        assert_eq!(
            parse("# nothing\n\n").unwrap(),
            from_yaml(None, None).unwrap()
        );
    }

    #[test]
    fn all_eight_policies_parse() {
        for p in [
            "noeviction",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let s = parse(&format!("valkey: {{ maxmemory_policy: {p} }}")).unwrap();
            assert_eq!(s.valkey.maxmemory_policy.to_string(), p);
        }
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let e = parse("valkey:\n  maxmemroy: 1gb\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.problem, "unknown key `valkey.maxmemroy`");
        assert_eq!(e.fix, "did you mean `maxmemory`?");
    }

    #[test]
    fn client_access_is_checked_entry_by_entry() {
        let s = parse(
            "valkey:\n  client_access:\n    commands: [SCAN, object|encoding]\n    keys: ['session:*']\n    channels: ['jobs:*']\n",
        )
        .unwrap();
        assert_eq!(s.valkey.client_access.commands, ["scan", "object|encoding"]);
        assert_eq!(s.valkey.client_access.keys, ["session:*"]);
        assert_eq!(s.valkey.client_access.channels, ["jobs:*"]);
        let e = parse("valkey: { client_access: { commands: [scan, flushall] } }").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("valkey.client_access.commands"));
        assert_eq!(e.problem, "`flushall` is administrative");
        let e = parse("valkey: { client_access: { keys: ['a b'] } }").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("valkey.client_access.keys"));
        let e = parse("valkey: { client_access: { command: [scan] } }").unwrap_err();
        assert_eq!(e.fix, "did you mean `commands`?");
        assert_eq!(
            parse("{}").unwrap().valkey.client_access,
            Default::default()
        );
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let e = parse("valkey:\n  appendonly: maybe\n").unwrap_err();
        assert_eq!(
            e.to_string().split(':').take(2).collect::<Vec<_>>(),
            ["evi.yaml", "2"]
        );
        assert_eq!(e.key.as_deref(), Some("valkey.appendonly"));
    }

    #[test]
    fn semantic_checks() {
        let e = parse("valkey: { auto_aof_rewrite_percentage: 4294967295 }").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("valkey.auto_aof_rewrite_percentage"));
        assert_eq!(
            parse("valkey: { maxmemory: 0 }")
                .unwrap_err()
                .key
                .as_deref(),
            Some("valkey.maxmemory")
        );
        assert_eq!(
            parse("network: 'bad name'").unwrap_err().key.as_deref(),
            Some("network")
        );
        assert_eq!(
            parse("state_dir: relative/dir").unwrap_err().key.as_deref(),
            Some("state_dir")
        );
        assert_eq!(
            parse("services: { evi-be: { command: [x] } }")
                .unwrap_err()
                .key
                .as_deref(),
            Some("services.evi-be.command")
        );
        let s = parse("valkey: { maxmemory: 2gb }").unwrap();
        assert!(check_fits_host(&s, 1 << 30).is_err());
        assert!(check_fits_host(&s, 4 << 30).is_ok());
    }

    #[test]
    fn replicas_and_env() {
        let s = parse(
            "services:\n  evi-be: { image: app }\n  evi-worker: { image: app, replicas: 3, env: { EVI_WORK_MS: 100, MODE: fast, ON: true } }\n",
        )
        .unwrap();
        assert_eq!(s.services.evi_be.as_ref().unwrap().replicas, 1);
        let worker = s.services.evi_worker.unwrap();
        assert_eq!(worker.replicas, 3);
        assert_eq!(
            worker.env,
            BTreeMap::from([
                ("EVI_WORK_MS".to_string(), "100".to_string()),
                ("MODE".to_string(), "fast".to_string()),
                ("ON".to_string(), "true".to_string()),
            ])
        );
        let cases = [
            ("evi-worker: { image: app, replicas: 0 }", "services.evi-worker.replicas", "0 replicas"),
            ("evi-worker: { image: app, replicas: -1 }", "services.evi-worker.replicas", "wrong type"),
            ("evi-worker: { replicas: 2 }", "services.evi-worker.replicas", "no image"),
            ("evi-state: { replicas: 2 }", "services.evi-state.replicas", "exactly one"),
            ("evi-be: { image: app, env: { VALKEY_URL: x } }", "services.evi-be.env.VALKEY_URL", "password secret"),
            ("evi-be: { image: app, env: { 1X: x } }", "services.evi-be.env.1X", "not an environment variable name"),
            ("evi-be: { image: app, env: { X: [1] } }", "services.evi-be.env.X", "string, number or boolean"),
            ("evi-be: { image: app, replicas: 31 }", "services.evi-be.replicas", "31 replicas of evi-be do not fit the fixed addresses of network_subnet 10.90.213.0/24 (room for 30)"),
        ];
        for (yaml, key, problem) in cases {
            let e = parse(&format!("services:\n  {yaml}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{yaml}: {e}");
            assert!(e.problem.contains(problem), "{yaml}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        let e = parse(
            "network_subnet: 10.1.2.64/26\nservices:\n  evi-worker: { image: app, replicas: 6 }\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "evi.yaml: `services.evi-worker.replicas`: 6 replicas of evi-worker do not fit the fixed addresses of \
             network_subnet 10.1.2.64/26 (room for 5); lower `replicas` to 5 or less, or set a larger `network_subnet`"
        );
        assert!(parse("services:\n  evi-be: { image: app, replicas: 30 }\n  evi-worker: { image: app, replicas: 29 }\n").is_ok());
    }

    #[test]
    fn a_typo_finds_the_nearest_key() {
        let keys = ["maxmemory".to_string(), "appendfsync".to_string()];
        assert_eq!(nearest("maxmemroy", &keys), Some("maxmemory"));
        assert_eq!(nearest("something-else", &keys), None);
    }
}
