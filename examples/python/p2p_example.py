#!/usr/bin/env python3
"""Drive a P2P File Transfer agent from Python with stubs generated from proto/.

The stubs are generated at start-up with grpcio-tools (pip install
grpcio-tools) into examples/python/gen/, so this script always matches the
contracts in the repository. It logs the agent in (when --user is given and
it is not logged in yet), lists the network's files and, with --download,
downloads one and follows the progress stream.

The agent's control API is its Unix socket, <data-dir>/control.sock, usable
only by the agent's own user; gRPC reaches it as unix:/path. An agent that
also serves TCP (--control-listen) wants its control token, read from
<data-dir>/control.token with --token-file.

    python3 examples/python/p2p_example.py --agent unix:$PWD/p2p-data/control.sock \
        --user alice --password '...' --download report.pdf
    python3 examples/python/p2p_example.py --agent 127.0.0.1:50054 \
        --token-file p2p-data/control.token
"""

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"
GEN = HERE / "gen"


def generate_stubs():
    from grpc_tools import protoc

    GEN.mkdir(exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={GEN}", f"--grpc_python_out={GEN}", *protos]
    )
    if code != 0:
        sys.exit(f"protoc failed with exit code {code}")
    sys.path.insert(0, str(GEN))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--agent",
        default="unix:" + str(pathlib.Path("p2p-data", "control.sock").resolve()),
        help="the agent's control API: unix:/path/control.sock (default: ./p2p-data's) or host:port",
    )
    parser.add_argument("--token-file", help="the agent's control.token, for a host:port agent")
    parser.add_argument("--user", help="log in as this user if the agent is not logged in")
    parser.add_argument("--password", help="password for --user")
    parser.add_argument("--download", metavar="NAME_OR_ID", help="download this file")
    parser.add_argument("--destination", default="", help="where the agent writes the download")
    args = parser.parse_args()

    generate_stubs()
    import grpc
    from p2p.agent.v1 import agent_pb2, agent_pb2_grpc

    target = args.agent
    if target.startswith("/"):
        target = "unix:" + target
    # gRPC would send the socket path as the HTTP/2 :authority, which the
    # agent's HTTP/2 server rejects as malformed; any plain host name does.
    options = [("grpc.default_authority", "localhost")] if target.startswith("unix:") else []
    channel = grpc.insecure_channel(target, options=options)
    # Sent with every call: the control token, when talking TCP.
    auth = []
    if args.token_file:
        token = pathlib.Path(args.token_file).read_text().strip()
        auth = [("authorization", f"Bearer {token}")]
    agent = agent_pb2_grpc.AgentControlStub(channel)
    try:
        status = agent.Status(agent_pb2.StatusRequest(), timeout=10, metadata=auth)
    except grpc.RpcError as err:
        sys.exit(f"cannot reach the agent at {args.agent}: {err.details()}")

    if not status.logged_in:
        if not args.user:
            sys.exit("the agent is not logged in: pass --user and --password")
        reply = agent.Login(agent_pb2.LoginRequest(username=args.user, password=args.password or ""), timeout=30, metadata=auth)
        print(f"logged in as {reply.user.username}, peer id {reply.peer_id}")
    else:
        print(f"agent already logged in as {status.user.username}")

    files = agent.ListFiles(agent_pb2.ListFilesRequest(), timeout=30, metadata=auth).files
    print(f"{len(files)} file(s) in the network:")
    for f in files:
        print(f"  {f.file.name:40} {f.file.size_bytes:>14} bytes  holders {f.file.online_holders}  id {f.file.file_id[:12]}")

    if args.download:
        final = None
        for event in agent.Download(
            agent_pb2.DownloadRequest(file=args.download, destination=args.destination, force=True), timeout=600, metadata=auth
        ):
            stage = agent_pb2.DownloadStage.Name(event.stage)
            print(f"  {stage:26} {event.have_bytes:>14}/{event.total_bytes} bytes  {event.sources_in_use} source(s)")
            if event.stage == agent_pb2.DOWNLOAD_STAGE_DONE:
                final = event.final_path
        if not final:
            sys.exit("the download stream ended before the file was complete")
        print(f"downloaded to {final}")


if __name__ == "__main__":
    main()
