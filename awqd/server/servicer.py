"""awq.v1.AwqdService: translates requests into daemon calls and results into messages, nothing more."""

import threading

from awqd.daemon import Daemon
from awqd.server import messages
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc


class AwqdServicer(awqd_pb2_grpc.AwqdServiceServicer):
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def Describe(self, request: pb.DescribeRequest, context) -> pb.DescribeResponse:
        return messages.describe(self.daemon.node_state(), self.daemon.models.list())

    def Generate(self, request: pb.GenerateRequest, context):
        job = self.daemon.generate(messages.generate_params(request))
        context.add_callback(job.cancelled.set)
        for event in job.results():
            yield messages.generate_response(event)

    def Benchmark(self, request: pb.BenchmarkRequest, context):
        stop = threading.Event()
        context.add_callback(stop.set)  # the client cancelled or its deadline passed
        for event in self.daemon.benchmark(messages.benchmark_params(request), stop, context.time_remaining):
            yield messages.benchmark_response(event)

    def LoadModel(self, request: pb.LoadModelRequest, context) -> pb.LoadModelResponse:
        hosted = self.daemon.load_model(request.name, request.path, request.device, request.kernel)
        return pb.LoadModelResponse(model=messages.model(hosted))

    def UnloadModel(self, request: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        self.daemon.models.unload(request.name)
        return pb.UnloadModelResponse()

    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[messages.model(m) for m in self.daemon.models.list()])
