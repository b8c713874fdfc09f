//! Connecting a generated `vigil.v1.Scoring` client: address, TLS (server CA, optional client
//! certificate for mutual TLS) and bearer token. Used by `vigil score`, the load generator and
//! the tests.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::proto as pb;

/// How to reach a server.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `HOST:PORT` or a URL (`http://HOST:PORT`, `https://HOST:PORT`).
    pub addr: String,
    /// CA certificate (PEM) to verify the server with; setting it turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the host of `addr`).
    pub tls_domain: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// Time allowed to connect.
    pub connect_timeout: Option<Duration>,
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what} {}: {cause}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("address `{addr}`: {cause}")]
    Address {
        addr: String,
        cause: tonic::transport::Error,
    },
    #[error("TLS: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        addr: String,
        cause: tonic::transport::Error,
    },
    #[error("the token cannot be sent in a header (spaces or non-ASCII characters?)")]
    Token,
    #[error("a client certificate needs its key, and a key its certificate")]
    Identity,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A generated Scoring client with the token interceptor.
pub type Client = pb::scoring_client::ScoringClient<InterceptedService<Channel, BearerToken>>;

impl ClientOptions {
    fn uses_tls(&self) -> bool {
        self.tls_ca.is_some() || self.addr.starts_with("https://")
    }

    fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else if self.uses_tls() {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The endpoint (address and TLS), not yet connected.
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|cause| ClientError::Read {
                what,
                path: path.clone(),
                cause,
            })
        };
        let mut endpoint =
            Endpoint::from_shared(self.url()).map_err(|cause| ClientError::Address {
                addr: self.addr.clone(),
                cause,
            })?;
        endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout.unwrap_or(Duration::from_secs(5)));
        if self.uses_tls() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read("TLS CA", ca)?));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            match (&self.client_cert, &self.client_key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read("client certificate", c)?,
                        read("client key", k)?,
                    ));
                }
                (None, None) => {}
                _ => return Err(ClientError::Identity),
            }
            endpoint = endpoint.tls_config(tls).map_err(ClientError::Tls)?;
        }
        Ok(endpoint)
    }

    fn bearer(&self) -> Result<BearerToken, ClientError> {
        self.token
            .as_ref()
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| ClientError::Token)
            })
            .transpose()
            .map(BearerToken)
    }

    /// Connects one HTTP/2 connection (a client can be cloned to share it).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(|cause| ClientError::Connect {
                addr: self.addr.clone(),
                cause,
            })?;
        self.client_on(channel)
    }

    /// A client over an existing channel.
    pub fn client_on(&self, channel: Channel) -> Result<Client, ClientError> {
        Ok(pb::scoring_client::ScoringClient::with_interceptor(
            channel,
            self.bearer()?,
        ))
    }
}
