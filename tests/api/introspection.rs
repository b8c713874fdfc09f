//! What the server tells about itself: GetModel, health (also before a model is loaded) and
//! reflection.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

use vigil::api::{self, ApiSettings, CoreSlot};
use vigil::proto as pb;

use crate::support::{model, tx};
use crate::{core, score_req, TestServer, T0};

#[tokio::test]
async fn get_model_describes_the_serving_model() {
    let core = core(3);
    let server = TestServer::start(CoreSlot::with(Arc::clone(&core)), ApiSettings::default()).await;
    let mut client = server.client().await;
    let info = client
        .get_model(pb::GetModelRequest {})
        .await
        .unwrap()
        .into_inner();
    let h = &model().header;
    assert_eq!(info.model_id, h.model_id);
    assert_eq!(info.version, h.version);
    assert_eq!(info.feature_names, h.feature_names);
    assert_eq!(info.feature_fingerprint, h.feature_fingerprint);
    assert_eq!(info.review_threshold, h.thresholds.review);
    assert_eq!(info.decline_threshold, h.thresholds.decline);
    assert_eq!(info.n_trees as usize, h.n_trees);
    assert_eq!(info.partitions, 3);
    assert_eq!(
        info.test_auc_roc,
        h.evaluation.as_ref().and_then(|e| e.auc_roc)
    );
    server.stop().await;
}

#[tokio::test]
async fn health_is_not_serving_until_a_model_is_loaded() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let slot = CoreSlot::empty();
    let server = TestServer::start(slot.clone(), ApiSettings::default()).await;
    let mut health = HealthClient::new(server.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", api::SERVICE_NAME] {
        let s = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(s, ServingStatus::NotServing as i32, "service {service:?}");
    }
    let mut client = server.client().await;
    let err = client
        .score(score_req(&tx("a").card("c1").at(T0).amount(1.0).build()))
        .await
        .expect_err("no model yet");
    assert_eq!(err.code(), Code::Unavailable);

    let mut watch = health
        .watch(check(api::SERVICE_NAME))
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().status;
    assert_eq!(first, ServingStatus::NotServing as i32);

    // The model finishes loading.
    slot.set(core(1));
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("health changes")
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(next, ServingStatus::Serving as i32);
    client
        .score(score_req(&tx("a").card("c1").at(T0).amount(1.0).build()))
        .await
        .expect("serving now");

    // Unloaded again (e.g. while a replacement with a different spec is built).
    slot.clear();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("health changes")
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(next, ServingStatus::NotServing as i32);
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_and_describes_the_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start(CoreSlot::with(core(1)), ApiSettings::default()).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                api::SERVICE_NAME.into(),
            )),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection answers")
        .into_inner();
    let listed = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&api::SERVICE_NAME), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let described = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("expected descriptors, got {described:?}");
    };
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("a descriptor"))
        .find(|f| f.package() == "vigil.v1")
        .expect("the vigil.v1 file");
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "Scoring")
        .expect("Scoring");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Score", "ScoreBatch", "StreamAlerts", "GetModel"]);
    server.stop().await;
}
