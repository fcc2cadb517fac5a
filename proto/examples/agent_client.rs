//! Drive a P2P File Transfer agent from Rust with the `p2p-proto` crate's
//! generated clients: show the agent's status, list the network's files
//! and, with `--download NAME`, download one and follow its progress.
//!
//! The agent's control API is its Unix socket, `<data-dir>/control.sock`
//! (only the agent's user may open it); an agent that also listens on TCP
//! (`--control-listen`) wants its control token from
//! `<data-dir>/control.token` on every call.
//!
//! ```sh
//! cargo run -p p2p-proto --example agent_client -- --agent p2p-data/control.sock --download report.pdf
//! cargo run -p p2p-proto --example agent_client -- --agent 127.0.0.1:50054 --token-file p2p-data/control.token
//! ```

use hyper_util::rt::TokioIo;
use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::agent::v1::{DownloadRequest, DownloadStage, ListFilesRequest, StatusRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let agent = flag("--agent").unwrap_or_else(|| "p2p-data/control.sock".into());
    let channel = connect(&agent).await?;
    let bearer: Option<MetadataValue<_>> = match flag("--token-file") {
        Some(path) => Some(format!("Bearer {}", std::fs::read_to_string(path)?.trim()).parse()?),
        None => None,
    };
    let mut client =
        AgentControlClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            if let Some(value) = &bearer {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            Ok(request)
        });

    let status = client.status(StatusRequest {}).await?.into_inner();
    let user = status.user.map(|u| u.username).unwrap_or_default();
    println!(
        "agent {agent}: logged in: {} {user}, peer {}",
        status.logged_in, status.peer_id
    );

    let files = client
        .list_files(ListFilesRequest::default())
        .await?
        .into_inner()
        .files;
    println!("{} file(s) in the network", files.len());
    for entry in &files {
        if let Some(file) = &entry.file {
            println!(
                "  {:40} {:>14} bytes  {} holder(s)",
                file.name, file.size_bytes, file.online_holders
            );
        }
    }

    if let Some(name) = flag("--download") {
        let mut stream = client
            .download(DownloadRequest {
                file: name,
                destination: flag("--destination").unwrap_or_default(),
                force: true,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            println!(
                "  {:?} {}/{} bytes from {} source(s)",
                event.stage(),
                event.have_bytes,
                event.total_bytes,
                event.sources_in_use
            );
            if event.stage() == DownloadStage::Done {
                println!("downloaded to {}", event.final_path);
            }
        }
    }
    Ok(())
}

/// A channel to a Unix socket path (`/path`, `unix:/path`) or a TCP
/// `host:port`.
async fn connect(agent: &str) -> Result<Channel, Box<dyn std::error::Error>> {
    let socket = agent.strip_prefix("unix:").unwrap_or(agent);
    if socket.contains('/') || socket.ends_with(".sock") {
        let path = std::path::PathBuf::from(socket);
        // The URI is required but unused: the connector opens the socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        return Ok(channel);
    }
    Ok(Endpoint::from_shared(format!("http://{agent}"))?
        .connect()
        .await?)
}
