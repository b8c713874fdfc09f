//! Who may call: bearer tokens, TLS and mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;

use vigil::api::client::ClientOptions;
use vigil::api::{self, ApiConfig, ApiSettings, CoreSlot, Tokens};
use vigil::proto as pb;
use vigil::scoring::ScoringCore;

use crate::support::tx;
use crate::{core, events, score_req, TestServer, T0};

#[tokio::test]
async fn bearer_tokens_are_required_when_configured() {
    let token = "test-token-0123456789abcdef";
    let settings = ApiSettings {
        tokens: Tokens::new([token, "another-token-0123456789"]),
        ..ApiSettings::default()
    };
    let core = core(1);
    let server = TestServer::start(CoreSlot::with(Arc::clone(&core)), settings).await;
    let t = score_req(&tx("a").card("c1").at(T0).amount(1.0).build());

    let mut anonymous = server.client().await;
    let err = anonymous.score(t.clone()).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anonymous
        .get_model(pb::GetModelRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    for wrong in [
        "test-token-0123456789abcdeX",
        "test-token-0123456789abcde",
        "x",
    ] {
        let mut c = ClientOptions {
            token: Some(wrong.into()),
            ..server.options()
        }
        .connect()
        .await
        .unwrap();
        let err = c.score(t.clone()).await.expect_err("wrong token");
        assert_eq!(err.code(), Code::Unauthenticated, "{wrong}");
    }
    // A non-bearer scheme is refused too.
    let mut req = tonic::Request::new(t.clone());
    req.metadata_mut()
        .insert("authorization", format!("Basic {token}").parse().unwrap());
    let err = anonymous.score(req).await.expect_err("basic auth");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(events(&core), 0, "refused calls changed nothing");

    let mut authed = ClientOptions {
        token: Some(token.into()),
        ..server.options()
    }
    .connect()
    .await
    .unwrap();
    authed.score(t).await.expect("the right token is accepted");
    assert_eq!(events(&core), 1);

    // Health stays open to probes without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: api::SERVICE_NAME.into(),
        })
        .await
        .expect("health needs no token")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// A CA, a server certificate for `localhost` and a client certificate signed by it, plus
/// a client certificate from an unrelated CA.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    let ca_params = || {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let ca = CertifiedIssuer::self_signed(ca_params(), KeyPair::generate().unwrap()).unwrap();
    write("ca.pem", ca.pem());
    let leaf = |names: Vec<String>, issuer: &CertifiedIssuer<'_, KeyPair>, stem: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        write(&format!("{stem}.pem"), cert.pem());
        write(&format!("{stem}.key"), key.serialize_pem());
    };
    leaf(vec!["localhost".into()], &ca, "server");
    leaf(vec!["client".into()], &ca, "client");
    let other = CertifiedIssuer::self_signed(ca_params(), KeyPair::generate().unwrap()).unwrap();
    leaf(vec!["intruder".into()], &other, "intruder");
    Pki { dir }
}

async fn start(pki: &Pki, mutual: bool) -> (TestServer, Arc<ScoringCore>) {
    let settings = ApiConfig {
        tls_cert: pki.path("server.pem"),
        tls_key: pki.path("server.key"),
        tls_client_ca: if mutual {
            pki.path("ca.pem")
        } else {
            Default::default()
        },
        ..ApiConfig::default()
    }
    .check()
    .expect("TLS settings are valid");
    let core = core(1);
    (
        TestServer::start(CoreSlot::with(Arc::clone(&core)), settings).await,
        core,
    )
}

fn client_options(server: &TestServer, pki: &Pki) -> ClientOptions {
    ClientOptions {
        addr: format!("localhost:{}", server.addr.port()),
        tls_ca: Some(pki.path("ca.pem")),
        ..ClientOptions::default()
    }
}

/// Connects and scores once; the error is whatever failed first.
async fn try_score(opts: ClientOptions) -> Result<(), String> {
    let mut c = opts.connect().await.map_err(|e| e.to_string())?;
    c.score(score_req(&tx("a").card("c1").at(T0).amount(1.0).build()))
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// PEM files that look right but hold no usable key are refused when the server starts, not
/// at the first handshake.
#[tokio::test]
async fn unusable_tls_material_is_refused_at_start() {
    let pki = pki();
    let bad_key = pki.path("bad.key");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let settings = ApiConfig {
        tls_cert: pki.path("server.pem"),
        tls_key: bad_key,
        ..ApiConfig::default()
    }
    .check()
    .expect("the files exist and look like PEM");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        api::serve(
            CoreSlot::with(core(1)),
            settings,
            listener,
            std::future::pending(),
        ),
    )
    .await
    .expect("refused at once");
    assert!(matches!(result, Err(api::ApiError::Tls(_))), "{result:?}");
}

#[tokio::test]
async fn tls_handshake_verifies_the_server() {
    let pki = pki();
    let (server, core) = start(&pki, false).await;
    try_score(client_options(&server, &pki))
        .await
        .expect("a client trusting the CA scores over TLS");
    assert_eq!(events(&core), 1);
    // Plaintext against a TLS port fails.
    let plain = ClientOptions {
        addr: format!("127.0.0.1:{}", server.addr.port()),
        ..ClientOptions::default()
    };
    assert!(try_score(plain).await.is_err());
    // A client trusting another CA refuses the server.
    let distrustful = ClientOptions {
        tls_ca: Some(pki.path("intruder.pem")),
        ..client_options(&server, &pki)
    };
    assert!(try_score(distrustful).await.is_err());
    assert_eq!(events(&core), 1);
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = pki();
    let (server, core) = start(&pki, true).await;
    assert!(
        try_score(client_options(&server, &pki)).await.is_err(),
        "no client certificate"
    );
    let intruder = ClientOptions {
        client_cert: Some(pki.path("intruder.pem")),
        client_key: Some(pki.path("intruder.key")),
        ..client_options(&server, &pki)
    };
    assert!(
        try_score(intruder).await.is_err(),
        "certificate from another CA"
    );
    assert_eq!(events(&core), 0);
    let member = ClientOptions {
        client_cert: Some(pki.path("client.pem")),
        client_key: Some(pki.path("client.key")),
        ..client_options(&server, &pki)
    };
    try_score(member)
        .await
        .expect("a client certificate from the CA is accepted");
    assert_eq!(events(&core), 1);
    server.stop().await;
}
