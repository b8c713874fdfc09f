//! The one layering loader of vigil's configuration: a TOML file, then environment variables,
//! then flags, each layer overriding the one before. Every key can be set in all three places:
//!
//! - file: `vigil.toml` (`vigil config example` prints a commented one; every key is optional),
//! - environment: `VIGIL_<SECTION>__<KEY>`, e.g. `VIGIL_KAFKA__BROKERS=host:9092` or
//!   `VIGIL_GRPC__MAX_BATCH=100`; pass-through properties as
//!   `VIGIL_KAFKA__CONSUMER__FETCH_MIN_BYTES=1` (underscores become dots),
//! - flags: `--set section.key=value` for any key, and named flags for the essentials.
//!
//! The loader knows no component: the schema is the configuration type's own defaults (every
//! key, and the type of its value, is in `T::default()` serialized), so a key that is not there
//! is unknown, and text from the environment or a flag is parsed as the type of the default.
//! Optional values are therefore plain strings whose empty value means "not set". An unknown key
//! or a value of the wrong type is refused with the key's full name and where it came from (file,
//! variable or flag); [`Layered::validate`] then checks values that parse but make no sense,
//! again naming the key. A variable spelled with one underscore between section and key
//! (`VIGIL_GRPC_MAX_BATCH`) is refused with the spelling that works, since it is almost
//! certainly meant as configuration.
//!
//! The composition (which sections exist) is `crate::serve::config::Config`; each section's type
//! lives with its component (`stream::config`, `api::config`, `scoring::config`, ...).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "VIGIL_";

/// A configuration that cannot be used, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        origin: String,
        key: String,
        hint: String,
    },
    #[error("{origin}: key `{key}`: {message}")]
    BadValue {
        origin: String,
        key: String,
        message: String,
    },
}

/// Where a key's value came from, for error messages.
#[derive(Debug, Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn of(&self, key: &str) -> String {
        // The longest recorded prefix: a table set in the file names the file.
        let mut k = key;
        loop {
            if let Some(o) = self.0.get(k) {
                return o.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return "default".into(),
            }
        }
    }
}

/// A configuration the [`Loader`] can build: serializable (its defaults give every key and the
/// type of its value), with tables of pass-through properties and a final check.
pub trait Layered: Serialize + DeserializeOwned + Default {
    /// Whether `section.key` is a table of pass-through properties (librdkafka's), whose keys are
    /// not known in advance and whose values are kept as text.
    fn passthrough(_section: &str, _key: &str) -> bool {
        false
    }

    /// Checks values that parse but cannot work; the error names the full key.
    fn validate(&self) -> Result<(), KeyError>;
}

/// A value that parses but cannot be used, at `key` (dotted, from the top of the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error for a component configured in table `section`.
    pub fn under(self, section: &str) -> KeyError {
        KeyError {
            key: format!("{section}.{}", self.key),
            message: self.message,
        }
    }
}

/// Builds a `T` from its layers. See the module docs.
#[derive(Debug)]
pub struct Loader<T> {
    tree: toml::Table,
    defaults: toml::Table,
    origins: Origins,
    _config: PhantomData<T>,
}

impl<T: Layered> Default for Loader<T> {
    fn default() -> Self {
        Loader::new()
    }
}

fn table_of<T: Serialize>(config: &T) -> toml::Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        // The config types serialize to a table by construction.
        _ => toml::Table::new(),
    }
}

fn passthrough<T: Layered>(section: &str, key: &str) -> bool {
    T::passthrough(section, key)
}

impl<T: Layered> Loader<T> {
    /// Starts from the defaults.
    pub fn new() -> Loader<T> {
        let defaults = table_of(&T::default());
        Loader {
            tree: defaults.clone(),
            defaults,
            origins: Origins::default(),
            _config: PhantomData,
        }
    }

    /// Layers a TOML file on top.
    pub fn file(self, path: &Path) -> Result<Loader<T>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        self.toml_text(&text, &path.display().to_string())
    }

    /// Layers TOML text on top; `origin` names it in errors.
    pub fn toml_text(mut self, text: &str, origin: &str) -> Result<Loader<T>, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        for (section, value) in table {
            let (true, toml::Value::Table(fields)) = (self.defaults.contains_key(&section), &value)
            else {
                return Err(self.unknown_or_bad(origin, &section, None));
            };
            for (key, v) in fields {
                let path = format!("{section}.{key}");
                if passthrough::<T>(&section, key) {
                    let toml::Value::Table(props) = v else {
                        return Err(ConfigError::BadValue {
                            origin: origin.into(),
                            key: path,
                            message: "expected a table of librdkafka properties".into(),
                        });
                    };
                    for (prop, pv) in props {
                        let s = match pv {
                            toml::Value::String(s) => s.clone(),
                            toml::Value::Integer(i) => i.to_string(),
                            toml::Value::Float(f) => f.to_string(),
                            toml::Value::Boolean(b) => b.to_string(),
                            _ => {
                                return Err(ConfigError::BadValue {
                                    origin: origin.into(),
                                    key: format!("{path}.{prop}"),
                                    message: "expected a string, number or boolean".into(),
                                })
                            }
                        };
                        self.set_prop(origin, &section, key, prop, s)?;
                    }
                } else {
                    self.set_value(origin, &section, key, v.clone())?;
                }
            }
        }
        Ok(self)
    }

    /// Layers the `VIGIL_<SECTION>__<KEY>` variables of `vars` on top (pass `std::env::vars()`).
    /// Variables with the prefix but without `__` are not configuration and are ignored.
    pub fn env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loader<T>, ConfigError> {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, value) in vars {
            if !name.contains("__") {
                // Not configuration (e.g. VIGIL_TOKEN for the client), unless it names a key
                // with the wrong separator.
                if let Some(fixed) = self.misspelled_key(&name) {
                    return Err(ConfigError::UnknownKey {
                        origin: format!("environment variable {name}"),
                        key: name[ENV_PREFIX.len()..].to_ascii_lowercase(),
                        hint: format!(
                            " (configuration variables separate section and key with two \
                             underscores: {fixed})"
                        ),
                    });
                }
                continue;
            }
            let origin = format!("environment variable {name}");
            let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let parts: Vec<&str> = rest.splitn(3, "__").collect();
            match parts.as_slice() {
                [section, key, prop] if passthrough::<T>(section, key) => {
                    let prop = prop.replace('_', ".");
                    self.set_prop(&origin, section, key, &prop, value)?;
                }
                [section, key] => self.set_text(&origin, section, key, &value)?,
                _ => {
                    return Err(ConfigError::UnknownKey {
                        origin,
                        key: rest.replace("__", "."),
                        hint: String::new(),
                    })
                }
            }
        }
        Ok(self)
    }

    /// `VIGIL_GRPC_MAX_BATCH` -> `Some("VIGIL_GRPC__MAX_BATCH")` when `grpc.max_batch` is a key.
    fn misspelled_key(&self, name: &str) -> Option<String> {
        let rest = name.get(ENV_PREFIX.len()..)?.to_ascii_lowercase();
        self.defaults.iter().find_map(|(section, table)| {
            let key = rest.strip_prefix(section.as_str())?.strip_prefix('_')?;
            table.as_table()?.contains_key(key).then(|| {
                format!(
                    "{ENV_PREFIX}{}__{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                )
            })
        })
    }

    /// Layers one `key=value` assignment (the `--set` flag; `origin` names the flag).
    pub fn assign(mut self, assignment: &str, origin: &str) -> Result<Loader<T>, ConfigError> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(ConfigError::Syntax {
                origin: origin.into(),
                message: format!("`{assignment}` is not key=value (e.g. kafka.brokers=host:9092)"),
            });
        };
        let key = key.trim();
        let mut parts = key.splitn(3, '.');
        let (section, field, prop) = (parts.next(), parts.next(), parts.next());
        match (section, field, prop) {
            (Some(s), Some(f), Some(p)) if passthrough::<T>(s, f) => {
                self.set_prop(origin, s, f, p, value.to_string())?
            }
            (Some(s), Some(f), None) => self.set_text(origin, s, f, value)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.into(),
                    key: key.into(),
                    hint: String::new(),
                })
            }
        }
        Ok(self)
    }

    /// Sets `section.key` from text, typed like its default (the named flags use this).
    pub fn set(
        mut self,
        section: &str,
        key: &str,
        value: &str,
        origin: &str,
    ) -> Result<Loader<T>, ConfigError> {
        self.set_text(origin, section, key, value)?;
        Ok(self)
    }

    fn unknown_or_bad(&self, origin: &str, section: &str, key: Option<&str>) -> ConfigError {
        let known: Vec<String> = match key {
            None => self.defaults.keys().cloned().collect(),
            Some(_) => self
                .defaults
                .get(section)
                .and_then(|v| v.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default(),
        };
        let full = match key {
            None => section.to_string(),
            Some(k) => format!("{section}.{k}"),
        };
        if key.is_none() && self.defaults.contains_key(section) {
            return ConfigError::BadValue {
                origin: origin.into(),
                key: full,
                message: "expected a table".into(),
            };
        }
        ConfigError::UnknownKey {
            origin: origin.into(),
            key: full,
            hint: format!(" (known: {})", known.join(", ")),
        }
    }

    fn default_of(&self, section: &str, key: &str) -> Option<&toml::Value> {
        self.defaults.get(section)?.as_table()?.get(key)
    }

    fn set_value(
        &mut self,
        origin: &str,
        section: &str,
        key: &str,
        value: toml::Value,
    ) -> Result<(), ConfigError> {
        let Some(default) = self.default_of(section, key) else {
            return Err(self.unknown_or_bad(origin, section, Some(key)));
        };
        if default.type_str() != value.type_str() {
            return Err(ConfigError::BadValue {
                origin: origin.into(),
                key: format!("{section}.{key}"),
                message: format!(
                    "expected a {}, found a {} ({value})",
                    default.type_str(),
                    value.type_str()
                ),
            });
        }
        if let Some(toml::Value::Table(t)) = self.tree.get_mut(section) {
            t.insert(key.to_string(), value);
        }
        self.origins
            .0
            .insert(format!("{section}.{key}"), origin.to_string());
        Ok(())
    }

    /// Sets a key from text, parsed as the type of its default.
    fn set_text(
        &mut self,
        origin: &str,
        section: &str,
        key: &str,
        text: &str,
    ) -> Result<(), ConfigError> {
        let Some(default) = self.default_of(section, key) else {
            return Err(self.unknown_or_bad(origin, section, Some(key)));
        };
        let bad = |what: &str| ConfigError::BadValue {
            origin: origin.into(),
            key: format!("{section}.{key}"),
            message: format!("`{text}` is not {what}"),
        };
        let value = match default {
            toml::Value::String(_) => toml::Value::String(text.to_string()),
            toml::Value::Integer(_) => {
                toml::Value::Integer(text.trim().parse::<i64>().map_err(|_| bad("an integer"))?)
            }
            toml::Value::Boolean(_) => match text.trim() {
                "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                _ => return Err(bad("a boolean (true/false)")),
            },
            toml::Value::Float(_) => {
                toml::Value::Float(text.trim().parse::<f64>().map_err(|_| bad("a number"))?)
            }
            _ => return Err(bad("settable from text")),
        };
        self.set_value(origin, section, key, value)
    }

    fn set_prop(
        &mut self,
        origin: &str,
        section: &str,
        key: &str,
        prop: &str,
        value: String,
    ) -> Result<(), ConfigError> {
        let path = format!("{section}.{key}.{prop}");
        if prop.is_empty() {
            return Err(ConfigError::UnknownKey {
                origin: origin.into(),
                key: path,
                hint: String::new(),
            });
        }
        let table = self
            .tree
            .get_mut(section)
            .and_then(|v| v.as_table_mut())
            .and_then(|t| {
                t.entry(key.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
            });
        if let Some(t) = table {
            t.insert(prop.to_string(), toml::Value::String(value));
        }
        self.origins.0.insert(path, origin.to_string());
        Ok(())
    }

    /// The layered configuration, checked (see [`Config::validate`]).
    pub fn build(self) -> Result<T, ConfigError> {
        let value = toml::Value::Table(self.tree);
        let config: T = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::BadValue {
                origin: self.origins.of(&key),
                key,
                message: e.inner().to_string(),
            }
        })?;
        config
            .validate()
            .map_err(|KeyError { key, message }| ConfigError::BadValue {
                origin: self.origins.of(&key),
                key,
                message,
            })?;
        Ok(config)
    }
}

/// Parses `250ms`, `5s`, `10m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) {
            return ms.parse::<u64>().ok().map(Duration::from_millis);
        }
        return None;
    }
    crate::features::parse_duration(s)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
}

/// Checks a duration key (`250ms`, `5s`, ...) of a component's table; `zero_ok` allows `0s`.
pub fn check_duration(key: &str, value: &str, zero_ok: bool) -> Result<Duration, KeyError> {
    match parse_duration(value) {
        Some(d) if zero_ok || !d.is_zero() => Ok(d),
        Some(_) => Err(KeyError::new(key, "must be longer than zero")),
        None => Err(KeyError::new(
            key,
            format!("`{value}` is not a duration (examples: 250ms, 5s, 10m, 2h, 7d)"),
        )),
    }
}

/// A checked duration value: validation guarantees it parses.
pub fn duration(value: &str) -> Duration {
    parse_duration(value).unwrap_or(Duration::from_secs(1))
}

/// The value `config show` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Whether a key (its last dotted part, or a pass-through property name) holds a secret:
/// passwords, secrets, private keys inline, tokens. Keys that only *name* where a secret is
/// (`token_file`, `tokens_env`, `ssl.key.location`) are not secrets.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k == "ssl.key.pem"
        || k == "sasl.oauthbearer.config"
        || k.ends_with("token")
        || k.ends_with("tokens")
}

/// `config` as TOML, every secret value replaced by [`REDACTED`] (what `vigil config show`
/// prints: safe to paste into a ticket).
pub fn to_toml_redacted<T: Serialize>(config: &T) -> Result<String, toml::ser::Error> {
    fn redact(table: &mut toml::Table) {
        for (key, value) in table.iter_mut() {
            match value {
                toml::Value::Table(t) => redact(t),
                v if is_secret(key) => *v = toml::Value::String(REDACTED.into()),
                _ => {}
            }
        }
    }
    let mut table = table_of(config);
    redact(&mut table);
    toml::to_string(&table)
}
