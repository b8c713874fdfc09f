//! Configuration of the gRPC API: the `[grpc]` table of vigil's configuration (also set by
//! `VIGIL_GRPC__<KEY>` and the `--grpc-*` flags), checked once into [`ApiSettings`] (tokens
//! read, TLS material read, limits in range). A bad value is refused with an error naming its
//! key. Paths and names that may be absent are strings whose empty value means "not set" (the
//! configuration loader types every key by its default).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default listening address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";
/// Shortest bearer token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The gRPC API's configuration, as written. Every key has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API (`vigil serve --grpc-addr ...` or `--no-kafka` turn it on).
    pub enabled: bool,
    /// Address to listen on, `HOST:PORT` (port 0 picks a free port).
    pub addr: String,
    /// Worker threads of the runtime that serves the API and the HTTP endpoints; 0 = one per
    /// core. (Kafka scoring has its own threads, `pipeline.workers`.)
    pub threads: usize,
    /// Server certificate chain (PEM). With `tls_key`, the API is served over TLS only.
    pub tls_cert: PathBuf,
    /// Server private key (PEM).
    pub tls_key: PathBuf,
    /// CA certificate(s) (PEM) that client certificates must chain to: mutual TLS. Clients
    /// without a valid certificate are refused during the handshake.
    pub tls_client_ca: PathBuf,
    /// File of bearer tokens, one per line (blank lines and `#` comments ignored).
    pub token_file: PathBuf,
    /// Name of an environment variable holding bearer tokens, comma-separated.
    pub tokens_env: String,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Unary calls (Score, ScoreBatch, GetModel) in progress at once, over all connections.
    /// Further calls wait for a slot until their deadline (or `queue_timeout_ms` without one),
    /// then fail with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// How long a call without a deadline waits for a slot.
    pub queue_timeout_ms: u64,
    /// Longest a request may run: applies when the client sets no deadline and caps a longer
    /// one.
    pub request_timeout_ms: u64,
    /// Most transactions in one ScoreBatch call.
    pub max_batch: usize,
    /// Most StreamAlerts subscribers at once.
    pub max_alert_subscribers: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: false,
            addr: DEFAULT_ADDR.to_string(),
            threads: 0,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_client_ca: PathBuf::new(),
            token_file: PathBuf::new(),
            tokens_env: String::new(),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            queue_timeout_ms: 1000,
            request_timeout_ms: 30_000,
            max_batch: 1000,
            max_alert_subscribers: 64,
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigError {
    /// The [`ApiConfig`] key at fault.
    pub key: &'static str,
    pub message: String,
}

impl ConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            key,
            message: message.into(),
        }
    }

    /// The command-line flag of the key: `--grpc-` and the key with dashes.
    pub fn flag(&self) -> String {
        format!("--grpc-{}", self.key.replace('_', "-"))
    }

    /// The same error as a configuration key error, `grpc.<key>`.
    pub fn key_error(&self) -> crate::config::KeyError {
        crate::config::KeyError::new(format!("grpc.{}", self.key), self.message.clone())
    }
}

/// PEM material for TLS, read from the configured files.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Client CA (mutual TLS), if configured.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    // The private key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// The set of accepted bearer tokens. Empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens(Vec<Box<[u8]>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Tokens given directly (tests, embedding). Blank entries are dropped.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(tokens: I) -> Tokens {
        let mut seen = HashSet::new();
        Tokens(
            tokens
                .into_iter()
                .map(|t| t.as_ref().trim().to_string())
                .filter(|t| !t.is_empty() && seen.insert(t.clone()))
                .map(|t| t.into_bytes().into_boxed_slice())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `presented` is one of the tokens. Every token is compared in full, without an
    /// early exit on the first differing byte, so timing does not reveal a token's prefix.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut ok = false;
        for t in &self.0 {
            ok |= constant_time_eq(t, presented);
        }
        ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A checked configuration, ready to serve with.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub tls: Option<TlsMaterial>,
    pub tokens: Tokens,
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
    pub queue_timeout: Duration,
    pub request_timeout: Duration,
    pub max_batch: usize,
    pub max_alert_subscribers: usize,
}

impl Default for ApiSettings {
    /// Plain TCP, no authentication, default limits.
    fn default() -> Self {
        ApiConfig::default()
            .check()
            .expect("the default configuration is valid (tested)")
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

fn check_pem(key: &'static str, path: &Path, bytes: &[u8], what: &str) -> Result<(), ConfigError> {
    let text = String::from_utf8_lossy(bytes);
    if !text.contains("-----BEGIN ") || !text.contains(what) {
        return Err(ConfigError::new(
            key,
            format!("{} holds no PEM {what}", path.display()),
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    v: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            key,
            format!("{v} is out of range ({min}..={max})"),
        ));
    }
    Ok(v)
}

/// A path key that is set (not empty).
fn given(p: &Path) -> Option<&Path> {
    Some(p).filter(|p| !p.as_os_str().is_empty())
}

impl ApiConfig {
    /// Checks the values without reading any file (what loading a configuration checks; files
    /// are read by [`check`](Self::check) when the API starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.addr.trim().is_empty() || !self.addr.contains(':') {
            return Err(ConfigError::new(
                "addr",
                format!("`{}` is not HOST:PORT", self.addr),
            ));
        }
        in_range("threads", self.threads, 0, 1024)?;
        in_range("max_message_bytes", self.max_message_bytes, 1024, 256 << 20)?;
        in_range(
            "max_concurrent_requests",
            self.max_concurrent_requests,
            1,
            1 << 20,
        )?;
        in_range("queue_timeout_ms", self.queue_timeout_ms, 0, 3_600_000)?;
        in_range("request_timeout_ms", self.request_timeout_ms, 1, 3_600_000)?;
        in_range("max_batch", self.max_batch, 1, 1_000_000)?;
        in_range(
            "max_alert_subscribers",
            self.max_alert_subscribers,
            1,
            100_000,
        )?;
        match (given(&self.tls_cert), given(&self.tls_key)) {
            (None, None) if given(&self.tls_client_ca).is_some() => Err(ConfigError::new(
                "tls_client_ca",
                "mutual TLS needs the server's own certificate too (tls_cert, tls_key)",
            )),
            (Some(_), None) => Err(ConfigError::new(
                "tls_key",
                "is missing: tls_cert is set, so the matching private key is needed",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "tls_cert",
                "is missing: tls_key is set, so the matching certificate is needed",
            )),
            _ => Ok(()),
        }
    }

    /// Checks every value, reads the token sources and the TLS files.
    pub fn check(&self) -> Result<ApiSettings, ConfigError> {
        self.validate()?;
        let tls = match (given(&self.tls_cert), given(&self.tls_key)) {
            (None, None) => {
                if given(&self.tls_client_ca).is_some() {
                    return Err(ConfigError::new(
                        "tls_client_ca",
                        "mutual TLS needs the server's own certificate too (tls_cert, tls_key)",
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "tls_key",
                    "is missing: tls_cert is set, so the matching private key is needed",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "tls_cert",
                    "is missing: tls_key is set, so the matching certificate is needed",
                ))
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read_file("tls_cert", cert)?;
                check_pem("tls_cert", cert, &cert_pem, "CERTIFICATE")?;
                let key_pem = read_file("tls_key", key)?;
                check_pem("tls_key", key, &key_pem, "PRIVATE KEY")?;
                let client_ca_pem = match given(&self.tls_client_ca) {
                    None => None,
                    Some(ca) => {
                        let pem = read_file("tls_client_ca", ca)?;
                        check_pem("tls_client_ca", ca, &pem, "CERTIFICATE")?;
                        Some(pem)
                    }
                };
                Some(TlsMaterial {
                    cert_pem,
                    key_pem,
                    client_ca_pem,
                })
            }
        };

        let mut tokens: Vec<String> = Vec::new();
        if let Some(path) = given(&self.token_file) {
            let text = String::from_utf8(read_file("token_file", path)?).map_err(|_| {
                ConfigError::new("token_file", format!("{} is not UTF-8", path.display()))
            })?;
            let from_file: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            if from_file.is_empty() {
                return Err(ConfigError::new(
                    "token_file",
                    format!(
                        "{} holds no token (one per line; `#` starts a comment)",
                        path.display()
                    ),
                ));
            }
            check_tokens("token_file", &from_file)?;
            tokens.extend(from_file);
        }
        if let Some(var) = Some(self.tokens_env.trim()).filter(|v| !v.is_empty()) {
            let value = std::env::var(var).map_err(|_| {
                ConfigError::new(
                    "tokens_env",
                    format!("environment variable {var} is not set (or not UTF-8)"),
                )
            })?;
            let from_env: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            if from_env.is_empty() {
                return Err(ConfigError::new(
                    "tokens_env",
                    format!("environment variable {var} holds no token (comma-separated)"),
                ));
            }
            check_tokens("tokens_env", &from_env)?;
            tokens.extend(from_env);
        }

        // In range: `validate` checked them.
        Ok(ApiSettings {
            tls,
            tokens: Tokens::new(tokens),
            max_message_bytes: self.max_message_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            queue_timeout: Duration::from_millis(self.queue_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_batch: self.max_batch,
            max_alert_subscribers: self.max_alert_subscribers,
        })
    }
}

fn check_tokens(key: &'static str, tokens: &[String]) -> Result<(), ConfigError> {
    for (i, t) in tokens.iter().enumerate() {
        if t.len() < MIN_TOKEN_LEN {
            return Err(ConfigError::new(
                key,
                format!(
                    "token {} is {} characters long; at least {MIN_TOKEN_LEN} are required",
                    i + 1,
                    t.len()
                ),
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                key,
                format!(
                    "token {} contains spaces or non-printable characters, which cannot travel \
                     in an `authorization` header",
                    i + 1
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        let s = ApiConfig::default().check().expect("default is valid");
        assert!(s.tokens.is_empty());
        assert!(s.tls.is_none());
    }

    #[test]
    fn the_grpc_table_parses_and_refuses_unknown_keys() {
        let c: ApiConfig = toml::from_str("addr = \"0.0.0.0:9000\"\nmax_batch = 10\n").unwrap();
        assert_eq!(c.addr, "0.0.0.0:9000");
        assert_eq!(c.max_batch, 10);
        let e = toml::from_str::<ApiConfig>("max_bach = 10\n").unwrap_err();
        assert!(e.to_string().contains("max_bach"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key_and_flag() {
        let c = ApiConfig {
            max_message_bytes: 10,
            ..ApiConfig::default()
        };
        let e = c.check().unwrap_err();
        assert_eq!(e.key, "max_message_bytes");
        assert_eq!(e.flag(), "--grpc-max-message-bytes");

        let c = ApiConfig {
            tls_cert: "cert.pem".into(),
            ..ApiConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "tls_key");

        let c = ApiConfig {
            tls_client_ca: "ca.pem".into(),
            ..ApiConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "tls_client_ca");

        let c = ApiConfig {
            tokens_env: "VIGIL_TEST_SURELY_UNSET_VARIABLE".into(),
            ..ApiConfig::default()
        };
        let e = c.check().unwrap_err();
        assert_eq!(e.key, "tokens_env");
        assert!(e.message.contains("VIGIL_TEST_SURELY_UNSET_VARIABLE"));
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# ops\n\n  0123456789abcdef-one \nsecond-token-0123456789\n",
        )
        .unwrap();
        let c = ApiConfig {
            token_file: path.clone(),
            ..ApiConfig::default()
        };
        let s = c.check().unwrap();
        assert_eq!(s.tokens.len(), 2);
        assert!(s.tokens.accepts(b"0123456789abcdef-one"));
        assert!(s.tokens.accepts(b"second-token-0123456789"));
        assert!(!s.tokens.accepts(b"second-token-012345678"));
        assert!(!s.tokens.accepts(b""));

        std::fs::write(&path, "short\n").unwrap();
        let e = c.check().unwrap_err();
        assert_eq!(e.key, "token_file");
        assert!(e.message.contains("at least 16"), "{e}");

        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(c.check().unwrap_err().message.contains("no token"));

        let missing = ApiConfig {
            token_file: dir.path().join("absent"),
            ..ApiConfig::default()
        };
        assert_eq!(missing.check().unwrap_err().key, "token_file");
    }

    #[test]
    fn tls_files_must_hold_pem() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let c = ApiConfig {
            tls_cert: cert,
            tls_key: key,
            ..ApiConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "tls_cert");
    }
}
