"""The gRPC layer: server life cycle, the servicer, the status interceptor, auth, TLS, limits, the metrics endpoint."""

from awqd_client.v1 import awqd_pb2

SERVICE_NAME = awqd_pb2.DESCRIPTOR.services_by_name["AwqdService"].full_name  # "awq.v1.AwqdService"
