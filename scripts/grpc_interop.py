#!/usr/bin/env python3
"""Checks vigil's gRPC API with another gRPC implementation (Python grpcio, C core) that has no
copy of the proto file: discover the service by server reflection, build the message types from
the descriptors the server sends, call Score and GetModel, and check health.

    python3 -m venv target/grpcvenv
    target/grpcvenv/bin/pip install grpcio grpcio-reflection grpcio-health-checking protobuf
    target/grpcvenv/bin/python scripts/grpc_interop.py 127.0.0.1:50051
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main(addr):
    channel = grpc.insecure_channel(addr)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**req):
        return next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**req)])))

    services = [s.name for s in ask(list_services="").list_services_response.service]
    print("services:", services)
    assert "vigil.v1.Scoring" in services, services

    pool = descriptor_pool.DescriptorPool()
    for raw in ask(file_containing_symbol="vigil.v1.Scoring").file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    service = pool.FindServiceByName("vigil.v1.Scoring")
    print("methods:", [m.name for m in service.methods])

    def call(method, body):
        m = service.methods_by_name[method]
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        stub = channel.unary_unary(
            f"/vigil.v1.Scoring/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return json_format.MessageToDict(stub(json_format.ParseDict(body, req_cls()), timeout=5))

    print("GetModel:", json.dumps(call("GetModel", {}))[:200], "...")
    resp = call("Score", {"transaction": {
        "transaction_id": "py-1", "timestamp": "2018-06-20T10:00:00Z", "card_id": "c1",
        "merchant_id": "m1", "amount": 950.5, "channel": "CHANNEL_ONLINE"}, "dry_run": True})
    print("Score:", json.dumps(resp))
    assert resp["verdict"]["transactionId"] == "py-1"
    try:
        call("Score", {"transaction": {"transaction_id": "py-2", "timestamp_ms": 1529488800000,
                                       "card_id": "c1", "merchant_id": "m1", "amount": -1}})
        raise AssertionError("a negative amount was accepted")
    except grpc.RpcError as e:
        print("refused:", e.code(), e.details())
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "transaction.amount" in e.details()

    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="vigil.v1.Scoring"), timeout=5)
    print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    print("interop OK")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
