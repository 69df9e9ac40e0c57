"""A real gRPC server (grpcio) with the standard health service, for tests/health.rs.

Listens on plaintext HTTP/2 on 127.0.0.1 (an ephemeral port), prints "PORT <n>" once
serving, then reads commands from stdin, one a line: "SERVING" or "NOT_SERVING" sets the
status of the whole server ("") and of service "app"; each is acknowledged with "OK <cmd>".
Services it was never told about answer NOT_FOUND, as grpcio's health servicer does.
"""

import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    for service in ("", "app"):
        servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    print(f"PORT {port}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        status = {
            "SERVING": health_pb2.HealthCheckResponse.SERVING,
            "NOT_SERVING": health_pb2.HealthCheckResponse.NOT_SERVING,
        }.get(cmd)
        if status is None:
            print(f"ERR {cmd}", flush=True)
            continue
        for service in ("", "app"):
            servicer.set(service, status)
        print(f"OK {cmd}", flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
