"""Open Inference Protocol v2 gRPC messages and stubs, generated from grpc_predict_v2.proto."""
